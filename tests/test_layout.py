"""The package layout of DESIGN.md and the torch-free runtime."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO

BLOCK_TORCH = textwrap.dedent(
    """
    import sys
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("torch", "transformers"):
                raise ImportError(f"{name} is blocked by the test")
            return None
    sys.meta_path.insert(0, Block())
    """
)


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_subpackages_map_to_their_folders():
    import mobilevlm.export
    import mobilevlm.runtime

    assert mobilevlm.export.__file__ == str(REPO / "export" / "__init__.py")
    assert mobilevlm.runtime.__file__ == str(REPO / "runtime" / "__init__.py")


def test_runtime_and_contracts_import_without_torch():
    proc = run_python(
        """
        import mobilevlm.runtime, mobilevlm.runtime.cli
        import mobilevlm.config, mobilevlm.preprocess, mobilevlm.prompts, mobilevlm.tokenizer
        import mobilevlm.sampling, mobilevlm.streaming, mobilevlm.result, mobilevlm.errors
        import mobilevlm.bundle, mobilevlm.decode_loop, mobilevlm.files
        import mobilevlm.runtime.onnx_model, mobilevlm.runtime.bundle, mobilevlm.runtime.bench
        import mobilevlm.runtime.llama_cpp_model, mobilevlm.runtime.mtmd_vision, llama_cpp
        import mobilevlm.runtime.backends
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
        print("HEAVY", heavy)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_blocker_really_blocks_torch():
    proc = run_python("import torch")
    assert proc.returncode != 0 and "blocked by the test" in proc.stderr


def test_cli_without_torch_names_the_missing_extra(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    proc = run_python(
        f"""
        from mobilevlm.runtime.cli import main
        sys.exit(main(["run", "--model", {str(tmp_path)!r}, "--image",
                       {str(tmp_path / "x.png")!r}, "--prompt", "hi"]))
        """
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch==2.13.0" in lines[0], proc.stderr


def test_runtime_sources_have_no_torch_import_statement():
    import re

    pattern = re.compile(r"^\s*(import|from)\s+(torch|transformers)\b", re.MULTILINE)
    offenders = [p.name for p in (REPO / "runtime").rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
