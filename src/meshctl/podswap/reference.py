"""Container image references: validation by the docker reference grammar, and the normal form
used to compare what a pod spec asks for with what the kubelet reports it runs.

    reference := [registry[:port]/]path[:tag][@sha256:<64 hex>]

The first `/`-separated part is the registry when it contains `.` or `:`, is `localhost`, or
has upper-case letters (as in docker); path components are lower-case alphanumerics joined by
`.`, `_`, `__` or dashes; a tag is up to 128 of `[A-Za-z0-9_.-]`, not starting with `.` or `-`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

from meshctl import errors

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_HOST = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9a-fA-F:]+\])"
_REGISTRY_RE = re.compile(rf"{_HOST}(?::[0-9]+)?")
_PATH_COMPONENT_RE = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG_RE = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_NAME_MAX = 255
_DOCKER_HUB = "docker.io"


@dataclass(frozen=True)
class ImageReference:
    registry: str | None
    """`host[:port]`, or None for Docker Hub's short form."""
    path: str
    tag: str | None
    digest: str | None

    def __str__(self) -> str:
        text = f"{self.registry}/{self.path}" if self.registry else self.path
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text

    def normalized(self) -> str:
        """The fully qualified form: `nginx` is `docker.io/library/nginx:latest`."""
        registry = self.registry or _DOCKER_HUB
        if registry == "index.docker.io":
            registry = _DOCKER_HUB
        path = self.path
        if registry == _DOCKER_HUB and "/" not in path:
            path = f"library/{path}"
        tag = self.tag or (None if self.digest else "latest")
        return str(ImageReference(registry, path, tag, self.digest))


@functools.lru_cache(maxsize=256)
def parse(text: str) -> ImageReference:
    """Parse and validate; raises BadInput naming what is wrong."""
    problem = _problem(text)
    if problem:
        raise errors.BadInput(f"bad image reference {text!r}: {problem}")
    rest, _, digest = text.partition("@")
    registry: str | None = None
    first, sep, remainder = rest.partition("/")
    if sep and _is_registry(first):
        registry, rest = first, remainder
    path, tag = rest, None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        path, tag = rest[:colon], rest[colon + 1:]
    return ImageReference(registry, path, tag, digest or None)


def is_valid(text: str) -> bool:
    return not _problem(text)


def same_image(a: str, b: str) -> bool:
    """Whether two references name the same image (`nginx:1` and `docker.io/library/nginx:1`).
    Unparsable references compare as plain strings."""
    if a == b:
        return True
    if not (is_valid(a) and is_valid(b)):
        return False
    return parse(a).normalized() == parse(b).normalized()


def _is_registry(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost" or first.lower() != first


# Memoized: a rollout checks the same few references over and over (every pod's slots, on
# every watch event): 0.6 ms of CPU per pod before. Pure functions of the text; the result of
# `parse` is frozen.
@functools.lru_cache(maxsize=256)
def _problem(text: str) -> str | None:
    if not text:
        return "empty"
    if text != text.strip() or any(c.isspace() for c in text):
        return "contains white space"
    rest, at, digest = text.partition("@")
    if at and not _DIGEST_RE.fullmatch(digest):
        return "the digest must be sha256: and 64 lower-case hex digits"
    if not rest:
        return "no repository name"
    first, sep, remainder = rest.partition("/")
    if sep and _is_registry(first):
        if not _REGISTRY_RE.fullmatch(first):
            return f"bad registry {first!r}"
        rest = remainder
    name, tag = rest, None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):
        name, tag = rest[:colon], rest[colon + 1:]
        if not _TAG_RE.fullmatch(tag):
            return (f"bad tag {tag!r} (letters, digits, _ . -, at most 128, not starting "
                    f"with . or -)")
    if not name:
        return "no repository name"
    for component in name.split("/"):
        if not _PATH_COMPONENT_RE.fullmatch(component):
            return (f"bad path component {component!r} (lower-case letters and digits, "
                    f"separated by . _ __ or -)")
    full_name = text.partition("@")[0]
    if tag is not None:
        full_name = full_name[: -len(tag) - 1]
    if len(full_name) > _NAME_MAX:
        return f"the name is longer than {_NAME_MAX} characters"
    return None
