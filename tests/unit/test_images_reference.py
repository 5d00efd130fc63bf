"""Image references (`meshctl.podswap.reference`): the docker reference grammar."""

from __future__ import annotations

import pytest

from meshctl import errors
from meshctl.podswap import reference

DIGEST = "sha256:" + "a" * 64


@pytest.mark.parametrize(("text", "registry", "path", "tag", "digest"), [
    ("nginx", None, "nginx", None, None),
    ("nginx:1.27", None, "nginx", "1.27", None),
    ("envoyproxy/envoy:v1.40.0", None, "envoyproxy/envoy", "v1.40.0", None),
    ("ghcr.io/meshctl/standby:0.1.0", "ghcr.io", "meshctl/standby", "0.1.0", None),
    ("localhost:5000/proxy", "localhost:5000", "proxy", None, None),
    ("localhost/proxy:dev", "localhost", "proxy", "dev", None),
    ("registry.example:443/a/b/c:1_2-3.x", "registry.example:443", "a/b/c", "1_2-3.x", None),
    (f"ghcr.io/meshctl/proxy@{DIGEST}", "ghcr.io", "meshctl/proxy", None, DIGEST),
    (f"ghcr.io/meshctl/proxy:1.40.0@{DIGEST}", "ghcr.io", "meshctl/proxy", "1.40.0", DIGEST),
    ("my__repo/with-dashes--ok.and.dots", None, "my__repo/with-dashes--ok.and.dots", None, None),
])
def test_valid_references_are_parsed_into_their_parts(
    text: str, registry: str | None, path: str, tag: str | None, digest: str | None
) -> None:
    ref = reference.parse(text)
    assert (ref.registry, ref.path, ref.tag, ref.digest) == (registry, path, tag, digest)
    assert str(ref) == text
    assert reference.is_valid(text)


@pytest.mark.parametrize(("text", "problem"), [
    ("", "empty"),
    ("Nginx", "bad path component 'Nginx'"),
    ("nginx:", "bad tag ''"),
    ("nginx:-x", "bad tag '-x'"),
    ("nginx:" + "x" * 129, "bad tag"),
    ("nginx @x", "white space"),
    ("nginx@sha256:abc", "the digest must be sha256: and 64"),
    (f"nginx@md5:{'a' * 64}", "the digest must be sha256"),
    ("ghcr.io/", "no repository name"),
    ("ghcr.io/a//b", "bad path component ''"),
    ("-bad.io/x", "bad registry"),
    ("ghcr.io/a_-b", "bad path component"),
    ("a" * 256, "longer than 255"),
])
def test_invalid_references_are_refused_with_the_reason(text: str, problem: str) -> None:
    assert not reference.is_valid(text)
    with pytest.raises(errors.BadInput) as caught:
        reference.parse(text)
    assert problem in str(caught.value)


@pytest.mark.parametrize(("a", "b"), [
    ("nginx", "docker.io/library/nginx:latest"),
    ("nginx:1.27", "index.docker.io/library/nginx:1.27"),
    ("envoyproxy/envoy:v1.40.0", "docker.io/envoyproxy/envoy:v1.40.0"),
    ("ghcr.io/x/y:1", "ghcr.io/x/y:1"),
])
def test_familiar_and_fully_qualified_names_are_the_same_image(a: str, b: str) -> None:
    assert reference.same_image(a, b)


@pytest.mark.parametrize(("a", "b"), [
    ("nginx:1.27", "nginx:1.28"),
    ("ghcr.io/x/y:1", "docker.io/x/y:1"),
    (f"x/y@{DIGEST}", "x/y:latest"),
])
def test_different_images_are_not_the_same(a: str, b: str) -> None:
    assert not reference.same_image(a, b)
