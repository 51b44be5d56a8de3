"""Writes the schemas the chart tests check custom resources against: for each CustomResourceDefinition file given,
the openAPIV3Schema of its storage version, without status, descriptions and CEL rules (a chart renders no status), as
<group>_<plural>.<version>.json in this folder. Usage: python extract.py SOURCE-URL CRD.yaml [SOURCE-URL CRD.yaml ...]"""

from __future__ import annotations

import json
import pathlib
import sys

import yaml

HERE = pathlib.Path(__file__).resolve().parent
DROP = {"description", "x-kubernetes-validations"}


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k not in DROP}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(args: list[str]) -> None:
    if not args or len(args) % 2:
        sys.exit(__doc__)
    for source, path in zip(args[::2], args[1::2]):
        for crd in (d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d):
            spec = crd["spec"]
            (version,) = [v for v in spec["versions"] if v.get("storage")]
            schema = strip(version["schema"]["openAPIV3Schema"])
            schema["properties"].pop("status", None)
            out = {
                "$comment": f"openAPIV3Schema of {spec['names']['kind']} {spec['group']}/{version['name']} from {source}, "
                "without status, descriptions and CEL rules (written by extract.py)",
                **schema,
            }
            target = HERE / f"{spec['group']}_{spec['names']['plural']}.{version['name']}.json"
            target.write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
            print(target.name, target.stat().st_size)


if __name__ == "__main__":
    main(sys.argv[1:])
