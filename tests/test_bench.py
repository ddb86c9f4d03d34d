"""The benchmarks keep working: every script in bench/ starts, and the seeding tool
writes what the registry itself would write and reads back through it."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest

from abbild.db.registry import SQLRegistry
from abbild.registry import ImageFilters, Viewer

BENCH = pathlib.Path(__file__).resolve().parent.parent / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, check=False)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_bench_script_starts(script):
    done = run(str(BENCH / script), "--help")
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout


def test_seeded_rows_equal_what_create_image_writes():
    done = run(str(BENCH / "seed.py"), "--check", "300", "--seed", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "equal create_image's" in done.stdout


def test_a_seeded_database_reads_back_through_the_registry(tmp_path):
    url = f"sqlite:///{tmp_path / 'seeded.sqlite'}"
    done = run(str(BENCH / "seed.py"), url, "--images", "600", "--seed", "5")
    assert done.returncode == 0, done.stdout + done.stderr

    registry = SQLRegistry(url=url)
    try:
        everything, marker = [], None
        while page := registry.list_images(ImageFilters(), [("created_at", "desc")], 100, marker):
            everything += page
            marker = page[-1].id
        assert len({i.id for i in everything}) == len(everything) > 400  # deleted and killed ones are not listed
        assert all(i.properties for i in everything)
        assert any(i.tags for i in everything)
        project = everything[0].owner
        theirs = registry.list_images(
            ImageFilters(), [("name", "asc")], 1000, viewer=Viewer(project_id=project, is_admin=False)
        )
        assert any(i.owner == project for i in theirs)
        assert all(i.owner == project or i.visibility in ("public", "shared") or i.owner is None for i in theirs)
        again = run(str(BENCH / "seed.py"), url, "--images", "10")
        assert again.returncode != 0 and "already holds" in again.stdout + again.stderr
    finally:
        registry.close()
