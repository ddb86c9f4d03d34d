"""The sample configs in etc/ are what oslo-config-generator makes of the code as it is,
and they cover every installed store driver.

A stale sample fails with the command that refreshes it. A namespace the generator
config lists but nothing installs would silently drop out of the sample, so that
skips (fails under CI=true)."""

from __future__ import annotations

import configparser
import itertools
import os
import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest
from oslo_config import generator

ROOT = Path(__file__).resolve().parents[1]
ETC = ROOT / "etc"
GENERATOR_CONFIGS = sorted(ETC.glob("*-config-generator.conf"), key=lambda p: p.name)


def namespaces(generator_config: Path) -> list[str]:
    # oslo-config-generator repeats `namespace = ...`; configparser would keep only the last.
    lines = generator_config.read_text().splitlines()
    return [line.split("=", 1)[1].strip() for line in lines if line.split("=", 1)[0].strip() == "namespace"]


def output_file(generator_config: Path) -> Path:
    parser = configparser.ConfigParser(strict=False)  # tolerates the repeated namespace keys
    parser.read(generator_config)
    return ETC.parent / parser["DEFAULT"]["output_file"]


def test_every_service_has_a_generator_config():
    assert {p.name for p in GENERATOR_CONFIGS} >= {
        "abbild-api-config-generator.conf",
        "abbild-registry-config-generator.conf",
    }


@pytest.mark.parametrize("generator_config", GENERATOR_CONFIGS, ids=lambda p: p.name)
def test_sample_is_up_to_date(generator_config, tmp_path):
    installed = {ep.name for ep in entry_points(group="oslo.config.opts")}
    missing = [ns for ns in namespaces(generator_config) if ns not in installed]
    if missing:
        reason = f"namespaces {missing} are not installed, so the sample cannot be regenerated here"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    fresh = tmp_path / "sample"
    generator.main(["--config-file", str(generator_config), "--output-file", str(fresh)])
    committed = output_file(generator_config)
    assert committed.read_text() == fresh.read_text(), (
        f"{committed.relative_to(ETC.parent)} is stale; refresh it with "
        f"`oslo-config-generator --config-file etc/{generator_config.name}`"
    )


@pytest.mark.parametrize("generator_config", GENERATOR_CONFIGS, ids=lambda p: p.name)
def test_every_installed_driver_is_in_the_sample(generator_config):
    """A driver's options live in the namespace ``abbild.<driver name>`` (DESIGN.md);
    drivers shipped inside the core (``memory``) have none, and third-party ones (the
    example in tests/example_driver) are not ours to document."""
    ours = {f"abbild-{d.name}" for d in (ROOT / "drivers").iterdir() if (d / "setup.cfg").exists()}
    drivers = {ep.name for ep in entry_points(group="abbild.stores") if ep.dist.name in ours}
    wanted = {f"abbild.{name}" for name in drivers}
    assert wanted <= set(namespaces(generator_config)), (
        f"add `namespace = ...` lines for {sorted(wanted - set(namespaces(generator_config)))} to "
        f"etc/{generator_config.name}, then regenerate the sample"
    )


# -- no comments after a value --------------------------------------------------------------
# oslo.config, PasteDeploy (configparser) and systemd take `key = value  # note` as the value
# "value  # note": a sample written that way breaks what it configures, quietly. Comments go
# on lines of their own.

INLINE_COMMENT = re.compile(r"^\s*[^#;\s\[][^=]*=.*\s#")
FENCE = re.compile(r"^\s*(`{3,})\s*([\w-]*)")
HEREDOC = re.compile(r"(?:cat|tee)\b[^<]*?(?:>\s*)?(\S+\.(?:conf|ini|service))\b.*<<-?\s*['\"]?(\w+)")
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CONFIG_FILES = sorted(
    [
        *ETC.glob("*.sample"),
        *ETC.glob("*.ini"),
        *ETC.glob("*.conf"),
        *ETC.glob("systemd/*"),
        *ROOT.glob("*/abbild_*/*.ini"),
    ]
)


def fenced_blocks(path: Path):
    """(language, first line number, lines) of every fenced block in a Markdown file."""
    block = None
    for number, line in enumerate(path.read_text().splitlines(), 1):
        fence = FENCE.match(line)
        if block is None and fence:
            block = (fence.group(2), number + 1, [])
        elif block is not None and fence and not fence.group(2):
            yield block
            block = None
        elif block is not None:
            block[2].append(line)


def config_texts():
    """(where, first line number, lines) of every config text users copy: the files in
    etc/ and the shipped paste inis, the ini blocks of README.md and docs/, and what the
    shell blocks there write into config files (heredocs)."""
    for path in CONFIG_FILES:
        yield str(path.relative_to(ROOT)), 1, path.read_text().splitlines()
    for path in DOCUMENTS:
        for language, first, lines in fenced_blocks(path):
            where = f"{path.relative_to(ROOT)} ({language} block)"
            if language == "ini":
                yield where, first, lines
            elif language in ("bash", "sh", "shell", "console"):
                for index, line in enumerate(lines):
                    heredoc = HEREDOC.search(line)
                    if heredoc:
                        end = heredoc.group(2)
                        body = list(itertools.takewhile(lambda x, end=end: x.strip() != end, lines[index + 1 :]))
                        yield f"{where}, {heredoc.group(1)}", first + index + 1, body


def test_the_scan_finds_config_texts():
    found = {where.split(" (")[0] for where, _, _ in config_texts()}
    assert {"README.md", "docs/deploying.md", "etc/abbild-api.conf.sample", "etc/systemd/abbild-api.service"} <= found
    assert any(", /etc/abbild/abbild-api.conf" in where for where, _, _ in config_texts())


def test_no_comment_follows_a_value():
    found = [
        f"{where}, line {first + index}: {line.strip()}"
        for where, first, lines in config_texts()
        for index, line in enumerate(lines)
        if INLINE_COMMENT.match(line)
    ]
    assert not found, "comments after a value become part of it; move them to a line of their own:\n" + "\n".join(found)
