"""A small client for the judge models: OpenAI-compatible `/v1` endpoints, retried and cached.

Guard models are served the way users already serve models, e.g. a second `vllm serve
meta-llama/Llama-Guard-3-8B --port 8012`. Chat judges (Llama Guard, rubric) are sent a
conversation to `/chat/completions`, so the server applies the judge model's own chat template;
judges published with a raw prompt format (WildGuard, the HarmBench classifier) are sent exactly
that prompt to `/completions`.

Transient failures (connection refused, timeouts, HTTP 429 and 5xx) are retried with a short
back-off; after the last try a `JudgeError` names the judge, the URL and the cause in one line.
Verdicts are cached on disk by (judge, model, request, response, picture digest), so scoring the
same responses again costs no request. Pure standard library: both virtualenvs import it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Endpoint", "JudgeError", "VerdictCache", "cache_key"]

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}


class JudgeError(RuntimeError):
    """A judge model could not be asked, or gave an answer its adapter cannot read."""


@dataclass(frozen=True)
class Endpoint:
    """One judge model behind an OpenAI-compatible server (`url` is the `/v1` base)."""

    url: str
    model: str
    timeout_s: float = 60.0
    tries: int = 3
    backoff_s: float = 0.5

    def chat(self, messages: list[dict[str, Any]], max_tokens: int) -> str:
        body = {"model": self.model, "messages": messages, "max_tokens": max_tokens}
        reply = self._post("chat/completions", body)
        try:
            return reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(
                self._where() + f" answered without a chat message: {reply!r:.200}"
            ) from None

    def complete(self, prompt: str, max_tokens: int) -> str:
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens}
        reply = self._post("completions", body)
        try:
            return reply["choices"][0]["text"] or ""
        except (KeyError, IndexError, TypeError):
            raise JudgeError(
                self._where() + f" answered without a completion: {reply!r:.200}"
            ) from None

    def check(self) -> None:
        """One GET of the server's model list, before any judging: the server answers and
        serves `model` (a wrong HSR_JUDGE_MODEL is a 404 on every later request)."""
        url = f"{self.url.rstrip('/')}/models"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout_s) as reply:
                listed = json.loads(reply.read())
        except urllib.error.HTTPError as err:
            raise JudgeError(f"{self._where()}: GET {url} answered HTTP {err.code}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
            reason = str(getattr(err, "reason", err)) or type(err).__name__
            raise JudgeError(
                f"{self._where()} did not answer ({reason}); is the server up (HSR_JUDGE_URL is "
                "the /v1 base)?"
            ) from None
        except ValueError:
            raise JudgeError(f"{self._where()}: GET {url} did not answer in JSON") from None
        entries = listed.get("data") if isinstance(listed, dict) else None
        served = [e.get("id") for e in entries or [] if isinstance(e, dict)]
        if self.model not in served:
            raise JudgeError(
                f"{self._where()}: the server serves {', '.join(map(str, served)) or 'no model'}, "
                "not this one (HSR_JUDGE_MODEL names the served model)"
            )

    def _where(self) -> str:
        return f"judge model {self.model!r} at {self.url}"

    def _post(self, route: str, body: dict[str, Any]) -> dict[str, Any]:
        # Greedy: a judge's verdict must not depend on sampling.
        data = json.dumps({**body, "temperature": 0.0}).encode()
        url = f"{self.url.rstrip('/')}/{route}"
        last = "no answer"
        for attempt in range(1, self.tries + 1):
            request = urllib.request.Request(
                url, data=data, headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=self.timeout_s) as reply:
                    text = reply.read()
            except urllib.error.HTTPError as err:
                last = f"HTTP {err.code}"
                if err.code not in RETRY_STATUS:
                    raise JudgeError(f"{self._where()} refused the request: {last}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
                last = str(getattr(err, "reason", err)) or type(err).__name__
            else:
                try:
                    return json.loads(text)
                except ValueError:
                    raise JudgeError(
                        f"{self._where()} did not answer in JSON: {text[:120]!r}"
                    ) from None
            if attempt < self.tries:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
        raise JudgeError(
            f"{self._where()} did not answer after {self.tries} tries ({last}); "
            "is the server up (HSR_JUDGE_URL is the /v1 base)?"
        )


def cache_key(*parts: str | None) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(b"\x00" if part is None else part.encode("utf-8"))
        digest.update(b"\x1f")
    return digest.hexdigest()


@functools.lru_cache(maxsize=4096)
def file_digest(path: str | None) -> str | None:
    """sha256 of a picture; memoised, since the prefetch and the scoring both key on it."""
    if not path:
        return None
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class VerdictCache:
    """Verdicts on disk, one small JSON file per key; in memory for the process as well.

    The folder is `$HSR_JUDGE_CACHE_DIR`, else `judge-verdicts/` in the user's cache
    directory; `HSR_JUDGE_CACHE=0` turns the disk part off.
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self._memory: dict[str, dict[str, Any]] = {}

    @classmethod
    def from_env(cls) -> VerdictCache:
        if os.environ.get("HSR_JUDGE_CACHE", "1") == "0":
            return cls(None)
        explicit = os.environ.get("HSR_JUDGE_CACHE_DIR")
        if explicit:
            return cls(Path(explicit))
        from hsr_eval.files import user_cache_dir

        return cls(user_cache_dir() / "judge-verdicts")

    def _path(self, key: str) -> Path | None:
        return None if self.root is None else self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._memory:
            return self._memory[key]
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            return None  # a torn or foreign file: ask again
        self._memory[key] = value
        return value

    def put(self, key: str, value: dict[str, Any]) -> None:
        self._memory[key] = value
        path = self._path(key)
        if path is None:
            return
        from hsr_eval.files import write_text_atomic

        # Atomic, with the umask's permissions: a concurrent reader sees nothing or the verdict.
        write_text_atomic(path, json.dumps(value))
