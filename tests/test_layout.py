"""The package layout of DESIGN.md: torch stays in its folders, the device package stays
a device package, and the torch-free folders import without torch."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

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
TORCH_IMPORT = re.compile(r"^(\s*)(import|from)\s+(torch|transformers)\b", re.MULTILINE)
# the folders whose modules may import torch at the top: the reference, training, the
# exporters and the harness's torch peers
TORCH_FOLDERS = ("mobilevlm/reference", "mobilevlm/training", "export", "mobilevlm/bench/peers")
# folders whose modules may reach torch only inside a function that needs it (the default
# model's assembly, the scale benches' random models)
LAZY_TORCH_FOLDERS = ("mobilevlm/default_model", "mobilevlm/bench")
# the rest is torch-free: the runtime, the generation stages, the CLI, the contracts
TORCH_FREE = ("runtime", "mobilevlm/generation", "mobilevlm/cli", "mobilevlm/serve")


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", BLOCK_TORCH + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def modules(folder: str) -> list[Path]:
    """The folder's modules, without ``__main__`` (importing it runs a program)."""
    return sorted(p for p in (REPO / folder).rglob("*.py") if p.stem != "__main__")


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = list(relative.parts)
    if parts[0] in ("runtime", "export"):
        parts.insert(0, "mobilevlm")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def top_level_mobilevlm() -> list[Path]:
    return sorted((REPO / "mobilevlm").glob("*.py"))


def inside(path: Path, folders: tuple[str, ...]) -> bool:
    relative = path.relative_to(REPO).as_posix()
    return any(relative.startswith(folder + "/") for folder in folders)


def test_subpackages_map_to_their_folders():
    import mobilevlm.export
    import mobilevlm.runtime

    assert mobilevlm.export.__file__ == str(REPO / "export" / "__init__.py")
    assert mobilevlm.runtime.__file__ == str(REPO / "runtime" / "__init__.py")


def test_torch_is_imported_only_in_its_folders():
    offenders = []
    for path in sorted(REPO.glob("mobilevlm/**/*.py")) + modules("runtime") + modules("export"):
        if inside(path, TORCH_FOLDERS):
            continue
        for match in TORCH_IMPORT.finditer(path.read_text()):
            lazy = bool(match.group(1))
            if not (lazy and inside(path, LAZY_TORCH_FOLDERS)):
                offenders.append(path.relative_to(REPO).as_posix())
    assert offenders == []


def test_torch_free_folders_import_without_torch():
    names = [module_name(p) for f in TORCH_FREE for p in modules(f)]
    names += [module_name(p) for p in top_level_mobilevlm()]
    assert "mobilevlm.runtime.ort.model" in names and "mobilevlm.cli.run" in names
    proc = run_python(
        f"""
        import importlib
        for name in {names!r}:
            importlib.import_module(name)
        import llama_cpp
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
        print("HEAVY", heavy)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout


def test_runtime_never_imports_the_harness_the_cli_training_or_torch_code():
    pattern = re.compile(
        r"^\s*(import|from)\s+mobilevlm\.(bench|cli|training|export|reference)\b|"
        r"^\s*from\s+mobilevlm\s+import\s+(bench|cli|training|export|reference)\b",
        re.MULTILINE,
    )
    offenders = [p.name for p in modules("runtime") if pattern.search(p.read_text())]
    assert offenders == []


def test_runtime_holds_no_benchmark_evaluation_peer_or_report_module():
    names = {p.stem for p in modules("runtime")}
    harness = {n for n in names if re.search(r"bench|eval|peer|report|variant|cli", n)}
    assert harness == set()


def test_blocker_really_blocks_torch():
    proc = run_python("import torch")
    assert proc.returncode != 0 and "blocked by the test" in proc.stderr


def test_cli_without_torch_names_the_missing_extra(tmp_path):
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    proc = run_python(
        f"""
        from mobilevlm.cli import main
        sys.exit(main(["run", "--model", {str(tmp_path)!r}, "--image",
                       {str(tmp_path / "x.png")!r}, "--prompt", "hi"]))
        """
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch==2.13.0" in lines[0], proc.stderr


def test_test_helpers_are_not_installed():
    assert not (REPO / "mobilevlm" / "tiny_random.py").exists()
    assert (REPO / "tests" / "tiny_models.py").is_file()
