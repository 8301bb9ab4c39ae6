"""CNI errors: every failure a plugin reports carries a spec error code.

Hierarchy (code in brackets)::

    CNIError                      base; never raised directly
    ├── IncompatibleCNIVersion    [1]  config version not supported, verb not in that version
    ├── UnsupportedField          [2]  a config key/value this plugin refuses
    ├── UnknownContainer          [3]  the container does not exist (no cleanup DEL needed)
    ├── InvalidEnvironment        [4]  a CNI_* variable is missing or malformed
    ├── IOFailure                 [5]  reading stdin, state files under dataDir
    ├── DecodingFailure           [6]  stdin/prevResult is not valid JSON or has wrong types
    ├── InvalidNetworkConfig      [7]  config values that are wrong or contradict each other
    ├── InvalidNetNS              [8]  CNI_NETNS cannot be opened (libcni convention)
    ├── TryAgainLater             [11] transient: a busy resource
    ├── PluginNotAvailable        [50] STATUS: the plugin cannot serve ADD now
    ├── LimitedConnectivity       [51] STATUS: ... and existing containers may be affected
    ├── InternalError             [999] anything unexpected
    ├── DelegateError             [any] an error JSON returned by a delegated plugin, code kept
    └── StepsFailed               [any] several steps of one call failed, the first one's code

Only ``skel.run`` turns these into the error JSON on stdout.
"""

from __future__ import annotations

from typing import Any, ClassVar


class CNIError(Exception):
    """Base: a message that says what is wrong and what to fix, plus optional details."""

    code: ClassVar[int] = 999

    def __init__(self, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.msg = msg
        self.details = details

    def with_context(self, context: str) -> CNIError:
        """The same error with ``context: `` in front of its message (keeps the code)."""
        self.msg = f"{context}: {self.msg}"
        self.args = (self.msg,)
        return self

    def error_code(self) -> int:
        return self.code

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.error_code(), "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out


class IncompatibleCNIVersion(CNIError):
    code = 1


class UnsupportedField(CNIError):
    code = 2


class UnknownContainer(CNIError):
    code = 3


class InvalidEnvironment(CNIError):
    code = 4


class IOFailure(CNIError):
    code = 5


class DecodingFailure(CNIError):
    code = 6


class InvalidNetworkConfig(CNIError):
    code = 7


class InvalidNetNS(CNIError):
    code = 8


class TryAgainLater(CNIError):
    code = 11


class PluginNotAvailable(CNIError):
    code = 50


class LimitedConnectivity(CNIError):
    code = 51


class InternalError(CNIError):
    code = 999


class DelegateError(CNIError):
    """An error reported by a delegated plugin (IPAM); its code reaches the runtime unchanged."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg, details)
        self.delegate_code = code

    def error_code(self) -> int:
        return self.delegate_code


class StepsFailed(CNIError):
    """Several steps of one call failed (a DEL goes on after a failed step): every step's
    message, the first one's code."""

    def __init__(self, what: str, errors: list[CNIError]) -> None:
        msg = f"{what}: {len(errors)} steps failed: " + "; ".join(e.msg for e in errors)
        super().__init__(msg, "; ".join(e.details for e in errors if e.details))
        self.first_code = errors[0].error_code()

    def error_code(self) -> int:
        return self.first_code


def from_json(obj: object) -> CNIError:
    """Rebuild an error from a plugin's error JSON (the runtime side and delegation use it)."""
    if not isinstance(obj, dict) or not isinstance(obj.get("code"), int):
        return InternalError(f"plugin printed an error without a numeric code: {shown(obj)}")
    return DelegateError(obj["code"], str(obj.get("msg", "")), str(obj.get("details", "") or ""))


class ErrorList:
    """Best-effort teardown (DEL, GC): run every step, keep going past failures, then raise one
    error listing them all (netavark's error list). A single failure keeps its own code."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.errors: list[CNIError] = []

    def add(self, step: str, err: CNIError) -> None:
        self.errors.append(err.with_context(step))

    def step(self, name: str) -> _Step:
        """``with errors.step("release IPAM"): ...``: a CNIError inside is recorded, not raised."""
        return _Step(self, name)

    def raise_if_any(self) -> None:
        if not self.errors:
            return
        if len(self.errors) == 1:
            raise self.errors[0].with_context(self.what)
        raise StepsFailed(self.what, self.errors)


class _Step:
    def __init__(self, errors: ErrorList, name: str) -> None:
        self.errors, self.name = errors, name

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        if isinstance(exc, CNIError):
            self.errors.add(self.name, exc)
            return True
        return False


def shown(value: object) -> str:
    """A value the caller gave, for a message: ``repr()`` of it, except that a long string or
    list and deep nesting are cut short (stdin may hold a 10 MB string or 10,000 levels of
    nesting, and a message must stay a message). Small values read exactly as ``repr()``."""
    global _SHOWN
    if _SHOWN is None:
        _SHOWN = _make_shown()
    return str(_SHOWN.repr(value))


_SHOWN: Any = None


def _make_shown() -> Any:
    import itertools
    import reprlib

    class Shown(reprlib.Repr):
        def repr1(self, x: Any, level: int) -> str:
            if isinstance(x, dict):  # decoded objects are dict subclasses: keep their order
                if not x:
                    return "{}"
                if level <= 0:
                    return "{...}"
                items = [
                    f"{self.repr1(k, level - 1)}: {self.repr1(v, level - 1)}"
                    for k, v in itertools.islice(x.items(), self.maxdict)
                ]
                return "{" + ", ".join(items) + (", ...}" if len(x) > self.maxdict else "}")
            if isinstance(x, list):
                return self.repr_list(x, level)
            if isinstance(x, str):
                return self.repr_str(x, level)
            return super().repr1(x, level)

    shown = Shown()
    shown.maxlevel = 4
    shown.maxstring = shown.maxother = 160
    shown.maxlist = shown.maxdict = 12
    shown.maxlong = 60
    return shown
