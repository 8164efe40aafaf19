"""docs/openapi.yaml stays true: same routes as the app, valid examples, in step with the
prose reference, served by the running companion."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chi_companion import push_client
from chi_companion.analysis import routes as analysis_api
from chi_companion.backups import store as backup_store
from chi_companion.companion import Companion as Context
from chi_companion.core import config, ids
from chi_companion.core.config import parse
from chi_companion.sync import request as sync_store
from chi_companion.web import create_app

from tests.companion_process import Companion

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "docs" / "openapi.yaml"
REFERENCE = ROOT / "docs" / "api-reference.md"
METHODS = ("get", "put", "post", "delete", "head", "patch")


def load_spec() -> dict[str, Any]:
    return yaml.safe_load(SPEC_PATH.read_text())


def normalise(path: str) -> str:
    """/a/<x:int>/b and /a/{id}/b both become /a/{}/b."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def app_routes(tmp_path: Path) -> set[tuple[str, str]]:
    config = parse(
        {"server": {"data_dir": str(tmp_path)}, "devices": {"d1": {"api_key": "k" * 20}}},
        "test",
        env={},
    )
    app = create_app(Context.from_config(config))
    return {(r.method.lower(), normalise(r.rule)) for r in app.routes}


def spec_operations(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method, normalise(path))
        for path, item in spec["paths"].items()
        for method in item
        if method in METHODS
    }


def is_page_route(path: str) -> bool:
    """The status page's HTML routes: for browsers, not the API; listed in api-reference.md."""
    return not path.startswith("/api/v1/") and path != "/metrics"


def test_every_route_is_in_the_spec_and_back(tmp_path: Path) -> None:
    spec = load_spec()
    in_app = {(m, p) for m, p in app_routes(tmp_path) if not is_page_route(p)}
    in_spec = spec_operations(spec)
    assert in_app - in_spec == set(), "routes missing from docs/openapi.yaml"
    assert in_spec - in_app == set(), "documented operations the app does not have"


def test_the_spec_is_valid_openapi_31() -> None:
    from jsonschema.validators import validator_for

    spec = load_spec()
    assert spec["openapi"].startswith("3.1")
    for name, schema in spec["components"]["schemas"].items():
        validator_for(schema).check_schema(schema), name
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert op.get("operationId"), f"{method} {path} has no operationId"
            assert op.get("responses"), f"{method} {path} documents no responses"


def _validate(spec: dict[str, Any], schema: dict[str, Any], instance: Any, where: str) -> None:
    # Local $refs (#/components/...) resolve against a root that carries the components.
    root = {**schema, "components": spec["components"]}
    try:
        jsonschema.Draft202012Validator(root).validate(instance)
    except jsonschema.ValidationError as err:
        pytest.fail(f"example at {where} does not match its schema: {err.message}")


def _examples(media: dict[str, Any]) -> list[Any]:
    found = [media["example"]] if "example" in media else []
    found += [e["value"] for e in media.get("examples", {}).values()]
    return found


def _resolve(spec: dict[str, Any], obj: dict[str, Any]) -> dict[str, Any]:
    ref = obj.get("$ref")
    if not ref:
        return obj
    node: Any = spec
    for part in ref.lstrip("#/").split("/"):
        node = node[part]
    return node


def test_every_documented_example_validates() -> None:
    spec = load_spec()
    checked = 0
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method not in METHODS:
                continue
            bodies = []
            if "requestBody" in op:
                bodies += [("request", m) for m in op["requestBody"]["content"].values()]
            for code, ref in op["responses"].items():
                response = _resolve(spec, ref)
                bodies += [(code, m) for m in response.get("content", {}).values()]
            for where, media in bodies:
                for example in _examples(media):
                    _validate(spec, media["schema"], example, f"{method} {path} {where}")
                    checked += 1
    for name, response in spec["components"]["responses"].items():
        for media in response.get("content", {}).values():
            for example in _examples(media):
                _validate(spec, media["schema"], example, f"responses.{name}")
                checked += 1
    for name, schema in spec["components"]["schemas"].items():
        for example in schema.get("examples", []):
            _validate(spec, schema, example, f"schemas.{name}")
            checked += 1
    assert checked >= 10


def test_prose_reference_lists_exactly_the_page_routes(tmp_path: Path) -> None:
    pages = {(m, p) for m, p in app_routes(tmp_path) if is_page_route(p)}
    listed = {
        (m.lower(), normalise(p))
        for m, p in re.findall(r"^\| ([A-Z]+) \| `(/[^`]*)` \|", REFERENCE.read_text(), re.M)
    }
    assert pages and pages == listed


def test_prose_reference_covers_exactly_the_spec() -> None:
    spec = load_spec()
    documented = {
        (m.lower(), normalise(p))
        for m, p in re.findall(r"^### ([A-Z]+) (/api/v1/\S+|/metrics)", REFERENCE.read_text(), re.M)
    }
    # HEAD is described together with its GET.
    wanted = {(m, p) for m, p in spec_operations(spec) if m != "head"}
    assert wanted - documented == set(), "operations without a section in api-reference.md"
    assert documented - wanted == set(), "api-reference.md sections for unknown operations"


def test_running_companion_serves_the_spec(companion: Companion) -> None:
    status, headers, body = companion.request("GET", "/api/v1/openapi.yaml", key=False)
    assert status == 200
    assert headers["Content-Type"].startswith("application/yaml")
    assert body == SPEC_PATH.read_bytes()


def _anchored(pattern: str) -> str:
    return f"^{pattern}$"


def test_the_specs_limits_are_the_servers() -> None:
    """The spec's patterns and bounds are the ones the code enforces (fullmatch, so the spec's
    ^...$ is the same rule), so neither can change without the other."""

    spec = load_spec()
    schemas = spec["components"]["schemas"]
    assert schemas["DeviceId"]["pattern"] == _anchored(ids.DEVICE_ID_RE.pattern)
    # The Pi's push tool is standalone (no chi_companion imports on the Pi): its copy must agree.
    assert push_client.DEVICE_ID_RE.pattern == ids.DEVICE_ID_RE.pattern
    assert schemas["Sha256"]["pattern"] == _anchored(backup_store.SHA256_RE.pattern)
    assert schemas["BackupType"]["enum"] == list(config.BACKUP_TYPES)
    assert schemas["AnalysisStatus"]["enum"] == list(analysis_api.STATUSES)
    assert schemas["Int64"]["minimum"] == ids.INT64_MIN
    assert schemas["Int64"]["maximum"] == schemas["Id"]["maximum"] == ids.INT64_MAX
    sync = schemas["SyncRequest"]["properties"]
    assert sync["tables"]["propertyNames"]["pattern"] == _anchored(sync_store.TABLE_NAME_RE.pattern)
    assert sync["batchId"]["maxLength"] == sync_store.MAX_BATCH_ID
    analyze = schemas["AnalyzeRequest"]["properties"]
    assert analyze["focus"]["items"]["pattern"] == _anchored(analysis_api.FOCUS_RE.pattern)
    assert analyze["focus"]["maxItems"] == analysis_api.MAX_FOCUS
    assert analyze["rows"]["maxItems"] == analysis_api.MAX_INLINE_ROWS
    name = analyze["rows"]["items"]["properties"]["parameter_name"]
    assert name["pattern"] == analysis_api.NAME_RE.pattern
    params = {
        p["name"]: p["schema"] for p in spec["paths"]["/api/v1/analyses"]["get"]["parameters"]
    }
    assert params["limit"]["maximum"] == analysis_api.MAX_LIST
    assert params["limit"]["default"] == analysis_api.DEFAULT_LIST
    put = spec["paths"]["/api/v1/backups/{deviceId}/{type}/{filename}"]["put"]["parameters"]
    filename = next(p["schema"] for p in put if p["name"] == "filename")
    assert filename["maxLength"] == backup_store.MAX_CLIENT_NAME
