"""compress.kit, the public plug-in kit (issue 15, part 3): every name it declares resolves, is the
owner's object (a re-export, not a copy), and is documented."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re

import compress.kit as kit


def test_every_public_name_resolves_to_the_owners_object():
    assert kit.__all__ and len(set(kit.__all__)) == len(kit.__all__)
    missing = [n for n in kit.__all__ if not hasattr(kit, n)]
    assert not missing, f"compress.kit.__all__ names what it does not define: {missing}"
    for name in kit.__all__:
        obj = getattr(kit, name)
        owner = getattr(obj, "__module__", None)
        if owner and owner != "compress.kit" and (inspect.isclass(obj) or inspect.isfunction(obj)):
            assert getattr(importlib.import_module(owner), name) is obj, f"{name} is not {owner}.{name}"


def test_every_public_name_is_documented():
    """Classes and functions carry their own docstring (not an inherited one, nor the signature a
    dataclass gets by default); every name is described in the kit's module docstring."""
    undocumented = []
    for name in kit.__all__:
        obj = getattr(kit, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else obj.__doc__
            auto = dataclasses.is_dataclass(obj) and (doc or "").startswith(f"{obj.__name__}(")
            if not (doc or "").strip() or auto:
                undocumented.append(name)
    assert not undocumented, f"compress.kit names without a docstring: {undocumented}"
    mentioned = set(re.findall(r":(?:class|func|data):`~?([A-Za-z_]+)`", kit.__doc__))
    assert set(kit.__all__) <= mentioned, f"not described in compress.kit's docstring: {sorted(set(kit.__all__) - mentioned)}"


def test_the_three_steps_example_names_only_the_kit():
    """The docstring's "add a strategy" example imports from compress.kit only, and what it imports exists."""
    imports = re.findall(r"from (compress[\w.]*) import \(([^)]*)\)", kit.__doc__)
    assert imports and all(module == "compress.kit" for module, _ in imports)
    for _, names in imports:
        for name in (n.strip() for n in names.replace("\n", " ").split(",")):
            assert name in kit.__all__, f"the example imports {name}, not in compress.kit.__all__"
