"""``CNI_ARGS``: ``K=V;K2=V2`` pairs from the environment (deprecated by the spec, still used).

As in the reference (``pkg/types/args.go``), a plugin names the keys it understands; any
other key is an error unless ``IgnoreUnknown`` is ``1``/``true``. Runtimes send keys for
other consumers (podman and containerd: ``IgnoreUnknown=1;K8S_POD_NAME=...``).
"""

from __future__ import annotations

from dataclasses import dataclass

from cni_plugins.spec.errors import InvalidEnvironment, shown

_TRUE = ("1", "true", "True", "TRUE")


@dataclass(frozen=True, slots=True)
class CniArgs:
    pairs: tuple[tuple[str, str], ...] = ()
    skipped: tuple[str, ...] = ()  # lenient parse: the items that are not KEY=VALUE pairs

    @classmethod
    def parse(cls, text: str, *, lenient: bool = False) -> CniArgs:
        """``lenient`` (DEL): a malformed pair is skipped (and listed) instead of refused."""
        if not text:
            return cls()
        pairs, skipped = [], []
        for item in text.split(";"):
            if not item:
                continue
            key, sep, value = item.partition("=")
            if not sep or not key:
                if lenient:
                    skipped.append(item)
                    continue
                raise InvalidEnvironment(
                    f"CNI_ARGS: invalid pair {shown(item)}", 'CNI_ARGS must be "KEY=VALUE" pairs separated by ";"'
                )
            pairs.append((key, value))
        return cls(tuple(pairs), tuple(skipped))

    @property
    def ignore_unknown(self) -> bool:
        return self.get("IgnoreUnknown") in _TRUE

    def get(self, key: str) -> str | None:
        for k, v in reversed(self.pairs):
            if k == key:
                return v
        return None

    def check_known(self, known: frozenset[str]) -> None:
        """Refuse keys this plugin does not understand, unless IgnoreUnknown is set."""
        if self.ignore_unknown:
            return
        for key, _ in self.pairs:
            if key != "IgnoreUnknown" and key not in known:
                names = ", ".join(sorted(known)) or "none"
                raise InvalidEnvironment(
                    f"CNI_ARGS: unknown key {shown(key)}",
                    f"this plugin understands: {names}; add IgnoreUnknown=1 to pass keys meant for other plugins",
                )
