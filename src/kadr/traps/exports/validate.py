"""Validate a Camtrap DP package offline against local copies of the standard's schemas."""

from __future__ import annotations

import json
from pathlib import Path


def validate_camtrap_dp(folder: str | Path, schema_dir: str | Path) -> list[str]:
    """Errors of a Camtrap DP package ([] when valid), checked offline.

    ``schema_dir`` holds the standard's files (camtrap-dp-profile.json, the
    three table schemas, frictionless-data-package.json, geojson.json): the
    package's public schema URLs are resolved to them, the tables are checked
    by frictionless and the descriptor by the profile through jsonschema.
    """
    import frictionless
    import jsonschema
    from referencing import Registry, Resource
    from referencing.jsonschema import DRAFT7

    folder, schema_dir = Path(folder), Path(schema_dir)
    descriptor = json.loads((folder / "datapackage.json").read_text())
    errors: list[str] = []
    # The descriptor against the Camtrap DP profile, with its two remote $refs served locally.
    profile = json.loads((schema_dir / "camtrap-dp-profile.json").read_text())
    remote = {
        "https://specs.frictionlessdata.io/schemas/data-package.json":
            "frictionless-data-package.json",
        "http://json.schemastore.org/geojson.json": "geojson.json",
    }
    registry = Registry().with_resources(
        (url, Resource.from_contents(json.loads((schema_dir / name).read_text()),
                                     default_specification=DRAFT7))
        for url, name in remote.items()
    )
    validator = jsonschema.validators.validator_for(profile)(profile, registry=registry)
    errors += [f"datapackage.json: {e.json_path}: {e.message}"
               for e in validator.iter_errors(descriptor)]
    # The tables against their schemas, inlined for frictionless.
    local = dict(descriptor)
    local.pop("profile", None)
    local["resources"] = []
    for r in descriptor["resources"]:
        r = dict(r)
        local_schema = schema_dir / f"{r['name']}-table-schema.json"
        if isinstance(r.get("schema"), str) and local_schema.exists():
            r["schema"] = json.loads(local_schema.read_text())
        local["resources"].append(r)
    package = frictionless.Package(local, basepath=str(folder))
    report = package.validate()
    for task in report.tasks:
        for err in task.errors:
            errors.append(f"{task.name}: {err.message}")
    errors += [f"{e.message}" for e in report.errors]
    return errors
