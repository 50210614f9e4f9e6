"""The CLI dispatches subcommands and maps meshplug errors to exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshplug import cli, errors


def test_version_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["version", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["meshplug"]
    assert out["wasmtime"] == "50.0.1"


def test_unknown_command_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["no-such-command"])
    assert exc.value.code == 2


def test_python_dash_m_runs_the_cli() -> None:
    result = subprocess.run([sys.executable, "-m", "meshplug", "version"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stdout.startswith("meshplug ")


def test_operator_help_and_the_chart_document_the_ssrf_switches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["operator", "--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for said in (
        "--allow-loopback let module fetches reach loopback addresses (refused by default",
        "--block-cidr CIDR refuse module fetches to this network too",
        "Chart values: ssrf.allowLoopback, ssrf.blockCIDRs",
    ):
        assert said in text, text
    values = (Path(__file__).resolve().parents[2] / "charts" / "meshplug" / "values.yaml").read_text()
    ssrf = values[values.index("# -- the SSRF guard") : values.index("blockCIDRs: []")]
    assert "operator --allow-loopback" in ssrf and "operator --block-cidr" in ssrf, ssrf
    assert "Chart values: signatures.require, signatures.trustedKeys" in text, text
    signatures = values[values.index("# -- cosign signature policy") : values.index("trustedKeys: []")]
    assert "operator --require-signatures" in signatures and "operator --trusted-key" in signatures, signatures


@pytest.mark.parametrize(
    ("error", "exit_code"),
    [
        (errors.MeshplugError("x"), 1),
        (errors.ConfigError("bad flag"), 2),
        (errors.SpecError("bad spec"), 2),
        (errors.FetchError("boom", reason="checksum_mismatched"), 12),
        (errors.FetchError("boom", reason="download_failure"), 10),
        (errors.SignatureError("unsigned"), 20),
        (errors.ValidationError("rejected"), 1),
    ],
)
def test_errors_map_to_exit_codes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], error: errors.MeshplugError, exit_code: int
) -> None:
    from meshplug.commands import version

    def fail(_args: object) -> int:
        raise error

    monkeypatch.setattr(version, "run", fail)
    assert cli.main(["version"]) == exit_code
    assert str(error) in capsys.readouterr().err


def test_fetch_error_keeps_reason() -> None:
    err = errors.FetchError("sha256 differs", reason="checksum_mismatched")
    assert err.reason == "checksum_mismatched"
    assert isinstance(err, errors.MeshplugError)


def test_inspect_checks_sha256_of_local_files_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.guests.minimal import passthrough

    module = tmp_path / "m.wasm"
    module.write_bytes(passthrough())
    assert cli.main(["inspect", str(module), "--sha256", "0" * 64]) == 12
    assert "checksum mismatch" in capsys.readouterr().err
    import hashlib

    assert cli.main(["inspect", str(module), "--sha256", hashlib.sha256(module.read_bytes()).hexdigest()]) == 0
    rejected = tmp_path / "r.wasm"
    rejected.write_bytes(b"\0asm\x01\0\0\0")
    assert cli.main(["inspect", str(rejected)]) == 1


def test_file_urls_outside_the_roots_say_how_to_allow_them(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.wasm"
    assert cli.main(["fetch", "file:///etc/hostname", "-o", str(out), "--file-root", str(tmp_path)]) == 15
    err = capsys.readouterr().err
    assert "outside the allowed file roots" in err and "--file-root DIR" in err and "operator.fileRoots" in err


def test_render_shows_what_the_operator_would_create_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import hashlib

    import yaml

    from tests.guests.minimal import passthrough

    module = tmp_path / "plugin.wasm"
    module.write_bytes(passthrough())
    digest = hashlib.sha256(module.read_bytes()).hexdigest()
    manifests = tmp_path / "plugins.yaml"
    manifests.write_text(
        "apiVersion: meshplug.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: hdr, namespace: shop}\n"
        f"spec: {{url: 'file://{module}', sha256: {digest}, selector: {{matchLabels: {{app: cart}}}}}}\n"
        "---\napiVersion: meshplug.io/v1alpha1\nkind: WasmPlugin\nmetadata: {name: edge}\n"
        "spec: {url: oci://registry.example/edge:v1, dataPlane: agent}\n"
    )
    # the native route by default, as the operator's `--istio-delivery auto` on a cluster serving Istio's kinds
    assert cli.main(["render", str(manifests), "--module", str(module)]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = [(d.get("apiVersion"), d["kind"], (d.get("metadata") or {}).get("name") or d.get("plugin")) for d in docs]
    assert kinds == [("extensions.istio.io/v1alpha1", "WasmPlugin", "hdr"), (None, "AgentPush", "default/edge")]
    assert docs[0]["spec"]["sha256"] == digest and docs[0]["spec"]["selector"] == {"matchLabels": {"app": "cart"}}
    routed = tmp_path / "routed.yaml"  # the manifest's istioDelivery wins over the flag, and matchRules need it
    routed.write_text(manifests.read_text().split("---\n")[0].replace("spec: {", "spec: {istioDelivery: configmap, "))
    assert cli.main(["render", str(routed), "--module", str(module)]) == 0
    assert [d["kind"] for d in yaml.safe_load_all(capsys.readouterr().out)] == ["ConfigMap", "EnvoyFilter"]
    ruled = tmp_path / "ruled.yaml"
    ruled.write_text(manifests.read_text().split("---\n")[0].replace("spec: {", "spec: {matchRules: [{hosts: [a]}], "))
    assert cli.main(["render", str(ruled), "--module", str(module)]) == 2
    assert "shop/hdr: NotCarriedByIstio: spec.matchRules cannot be carried" in capsys.readouterr().err
    args = ["render", str(manifests), "--module", str(module), "--elide-data", "--istio-delivery", "configmap"]
    assert cli.main(args) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    kinds = [(None, d["kind"], (d.get("metadata") or {}).get("name") or d.get("plugin")) for d in docs]
    assert kinds == [
        (None, "ConfigMap", "meshplug-wasm-hdr"),
        (None, "EnvoyFilter", "meshplug-hdr"),
        (None, "AgentPush", "default/edge"),
    ]
    assert docs[0]["binaryData"] == {f"{digest}.wasm": f"<{module.stat().st_size} bytes, sha256 {digest}>"}
    assert docs[2]["push"]["resources"][0]["sha256"] == digest
    # a module the manifest's sha256 does not describe, a rejected module, an oci url without --module
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"\0asm\x01\0\0\0")
    assert cli.main(["render", str(manifests), "--module", str(bad)]) == 12
    only_agent = tmp_path / "agent.yaml"
    only_agent.write_text(manifests.read_text().split("---\n")[1])
    assert cli.main(["render", str(only_agent), "--module", str(bad)]) == 1
    assert cli.main(["render", str(only_agent)]) == 2
    assert "pass --module" in capsys.readouterr().err
