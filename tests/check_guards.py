"""Issue 34's guards, each removed in turn: the tests that should catch its loss must fail (the file is restored after).

Not collected by pytest (its name does not start with test_); run it by hand after changing a guard or its tests:

    python tests/check_guards.py [NAME ...]     # every guard, or the named ones; prints each one's failing tests

A guard whose tests still pass without it prints rc=0: that guard is untested.
"""
from __future__ import annotations

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: (name, file, the guard's text, what replaces it, pytest -k expression of the tests that must fail)
MUT = [
 ("escape", "src/diffusers_cli/run/report.py",
  'return html.escape(str(value).encode("utf-8", "replace").decode("utf-8"), quote=True)',
  'return str(value).encode("utf-8", "replace").decode("utf-8")', "hostile"),
 ("csp", "src/diffusers_cli/run/report.py",
  '<meta http-equiv="Content-Security-Policy" content="{_e(CSP)}">', '', "security_policy"),
 ("link-check", "src/diffusers_cli/run/reader.py",
  "        if not real.is_relative_to(self.real):\n            raise self._outside(path, real)\n        return real if", "        return real if",
  "linked_outside or link"),
 ("resume-check-inside", "src/diffusers_cli/run/reader.py",
  "        for path, real in self.links_out():\n            raise self._outside(path, real)", "        pass", "resume"),
 ("png-signature", "src/diffusers_cli/run/reader.py",
  "        if head != PNG_SIGNATURE:", "        if False:", "not_a_png"),
 ("re-encode", "src/diffusers_cli/run/reader.py",
  "        buf = io.BytesIO()\n        clean.save(buf, format=\"PNG\")\n        return buf.getvalue()",
  "        return path.read_bytes()", "not_a_png"),
 ("pixel-limit", "src/diffusers_cli/support/image_files.py",
  "    if width * height > limit:", "    if False:", "pixel_limit"),
 ("grids-reason", "src/diffusers_cli/run/facts.py",
  'f"{GRIDS_NAME} was not read: {err.reason}."', 'f"{GRIDS_NAME} was not read: {err}"', "grids_file_or_snapshot"),
 ("scores-reader", "src/diffusers_cli/run/snapshots.py",
  "        text = RunFiles.of(run_dir).read_text(SNAPSHOT_SCORES_NAME, limit=SCORES_LIMIT)",
  "        text = (Path(run_dir) / SNAPSHOT_SCORES_NAME).read_text() if (Path(run_dir) / SNAPSHOT_SCORES_NAME).exists() else None",
  "grids_file_or_snapshot"),
 ("snapshot-list-reader", "src/diffusers_cli/run/snapshots.py",
  "        if m and files.file(name) is not None:", "        if m:", "evaluate_snapshots"),
]


def main(only: list[str]) -> None:
    """Remove each guard named in ``only`` (all when empty), run its tests, print what failed, restore the file."""
    for name, rel, old, new, k in MUT:
        if only and name not in only:
            continue
        p = ROOT / rel
        src = p.read_text()
        assert src.count(old) == 1, (name, src.count(old))
        p.write_text(src.replace(old, new))
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                "tests/test_run_report.py", "tests/test_hostile_runs.py", "-k", k, "-m", "not slow"],
                               cwd=ROOT, capture_output=True, text=True, timeout=900)
            tail = [l for l in r.stdout.splitlines() if " passed" in l or " failed" in l]
            failed = [l.split(" - ")[0] for l in r.stdout.splitlines() if l.startswith("FAILED")]
            print(f"{name}: rc={r.returncode} {tail[-1] if tail else ''}", *failed, sep="\n   ", flush=True)
        finally:
            p.write_text(src)


if __name__ == "__main__":
    main(sys.argv[1:])
