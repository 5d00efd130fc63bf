"""Kubernetes label selectors (`app=web,tier in (front,edge),!canary`): parsed and checked
before anything is asked of the API server, and matched on our side too.

The selector is sent to the API server, which filters; meshctl matches again what comes back,
so that a server that ignores `labelSelector` (some test servers do) cannot widen a rollout.

    selector    := requirement ("," requirement)*
    requirement := key ("=" | "==" | "!=") value | key ("in" | "notin") "(" values ")"
                 | key | "!" key

Keys are `[prefix/]name` (prefix a DNS subdomain of at most 253 characters; name at most 63
of `[A-Za-z0-9_.-]`, alphanumeric at both ends); values are empty or like a name. Pure.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass

from meshctl import errors

_NAME_RE = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_PREFIX_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PREFIX_MAX = 253
_WORD_RE = re.compile(r"\s*(!=|==|=|\(|\)|,|!|[^\s!=(),]+)")
_PUNCTUATION = frozenset({"!=", "==", "=", "(", ")", ",", "!"})


class Operator(enum.Enum):
    EQUALS = "="
    NOT_EQUALS = "!="
    IN = "in"
    NOT_IN = "notin"
    EXISTS = "exists"
    NOT_EXISTS = "!"


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: Operator
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        match self.operator:
            case Operator.EQUALS | Operator.IN:
                return present and value in self.values
            case Operator.NOT_EQUALS | Operator.NOT_IN:
                return not present or value not in self.values
            case Operator.EXISTS:
                return present
            case Operator.NOT_EXISTS:
                return not present

    def __str__(self) -> str:
        match self.operator:
            case Operator.EQUALS:
                return f"{self.key}={self.values[0]}"
            case Operator.NOT_EQUALS:
                return f"{self.key}!={self.values[0]}"
            case Operator.IN | Operator.NOT_IN:
                return f"{self.key} {self.operator.value} ({','.join(self.values)})"
            case Operator.EXISTS:
                return self.key
            case Operator.NOT_EXISTS:
                return f"!{self.key}"


@dataclass(frozen=True)
class Selector:
    requirements: tuple[Requirement, ...]

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        given = labels or {}
        return all(r.matches(given) for r in self.requirements)

    def __str__(self) -> str:
        """The canonical form: requirements sorted, values sorted, no spaces but in sets."""
        return ",".join(sorted(str(r) for r in self.requirements))


def parse(text: str) -> Selector:
    """Parse and validate; raises BadInput naming what is wrong. An empty selector is refused:
    it would select every pod."""
    if not text.strip():
        raise errors.BadInput("the label selector is empty: it would select every pod; give "
                              "one, e.g. --selector app=web")
    return _Parser(text).selector()


class _Parser:
    """Recursive descent over the words of a selector; `fail()` names the problem."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.words = _words(text)
        self.position = 0

    def take(self) -> str | None:
        if self.position >= len(self.words):
            return None
        self.position += 1
        return self.words[self.position - 1]

    def peek(self) -> str | None:
        return self.words[self.position] if self.position < len(self.words) else None

    def fail(self, problem: str) -> errors.BadInput:
        return errors.BadInput(f"bad label selector {self.text!r}: {problem}")

    def selector(self) -> Selector:
        requirements = [self.requirement()]
        while (separator := self.take()) is not None:
            if separator != ",":
                raise self.fail(f"unexpected {separator!r} (requirements are separated by "
                                f"commas)")
            requirements.append(self.requirement())
        return Selector(tuple(requirements))

    def requirement(self) -> Requirement:
        word = self.take()
        if word is None:
            raise self.fail("a requirement is missing (a trailing or doubled comma?)")
        if word == "!":
            return Requirement(self.key(self.take()), Operator.NOT_EXISTS)
        key = self.key(word)
        operator = self.peek()
        if operator in ("=", "==", "!="):
            self.take()
            value = "" if self.peek() in (None, *_PUNCTUATION) else str(self.take())
            self.value(value)  # `key=` selects the empty value
            op = Operator.NOT_EQUALS if operator == "!=" else Operator.EQUALS
            return Requirement(key, op, (value,))
        if operator in ("in", "notin"):
            self.take()
            op = Operator.IN if operator == "in" else Operator.NOT_IN
            return Requirement(key, op, self.values(str(operator)))
        return Requirement(key, Operator.EXISTS)

    def values(self, operator: str) -> tuple[str, ...]:
        if self.take() != "(":
            raise self.fail(f"`{operator}` needs a list in parentheses")
        values: set[str] = set()
        while True:
            value = self.take()
            if value is None:
                raise self.fail("a `(` is not closed")
            if value in _PUNCTUATION:
                raise self.fail(f"a value is missing in the list after `{operator}`")
            self.value(value)
            values.add(value)
            after = self.take()
            if after == ")":
                return tuple(sorted(values))
            if after != ",":
                raise self.fail(f"expected `,` or `)` after {value!r}")

    def key(self, word: str | None) -> str:
        if word is None or word in _PUNCTUATION:
            raise self.fail("a label key is missing")
        prefix, slash, name = word.rpartition("/")
        if slash and (not prefix or len(prefix) > _PREFIX_MAX
                      or not _PREFIX_RE.fullmatch(prefix)):
            raise self.fail(f"bad key prefix {prefix!r} (a DNS subdomain)")
        if not _NAME_RE.fullmatch(name):
            raise self.fail(f"bad label key {word!r} (at most 63 of A-Z a-z 0-9 - _ ., "
                            f"alphanumeric at both ends)")
        return word

    def value(self, word: str) -> None:
        if word and not _NAME_RE.fullmatch(word):
            raise self.fail(f"bad label value {word!r} (at most 63 of A-Z a-z 0-9 - _ ., "
                            f"alphanumeric at both ends)")


def _words(text: str) -> list[str]:
    words: list[str] = []
    position = 0
    stripped = text.rstrip()
    while position < len(stripped):
        match = _WORD_RE.match(stripped, position)
        if match is None:  # pragma: no cover  (every character is some token)
            raise errors.BadInput(f"bad label selector {text!r}")
        words.append(match.group(1))
        position = match.end()
    return words
