"""One settings schema (mose_lsp.protocol.settings_schema): the server parses settings with it,
and the editors' settings lists and the protocol document must agree with it."""

from __future__ import annotations

import json
import re
from pathlib import Path

from mose_lsp.config import Settings
from mose_lsp.protocol import resolve_config, settings_schema

REPO = Path(__file__).resolve().parents[1]
#: VS Code settings of the extension itself, not sent to the server.
VSCODE_CLIENT_ONLY = {"server.path", "server.args", "trace.server", "search.debounceMs"}


def test_schema_matches_what_the_parser_accepts():
    schema = settings_schema()
    defaults = resolve_config(Settings()).to_json()
    assert set(schema) == set(defaults)
    for key, entry in schema.items():
        assert entry["default"] == defaults[key], key
        config = resolve_config(Settings(), {key: entry["default"]})
        assert config.warnings == (), (key, config.warnings)
        if "minimum" in entry:  # the bounds are the parser's: just outside is refused
            below = entry["minimum"] - (1 if entry["type"] == "integer" else 0.5)
            assert resolve_config(Settings(), {key: below}).warnings, key
            above = entry["maximum"] + (1 if entry["type"] == "integer" else 0.5)
            assert resolve_config(Settings(), {key: above}).warnings, key
        # JSON null is "the default" for every key (editors send null for an empty setting).
        nulled = resolve_config(Settings(), {key: None})
        assert nulled.warnings == () and nulled.to_json()[key] == defaults[key], key


def test_vscode_settings_follow_the_schema():
    package = json.loads((REPO / "editors" / "vscode" / "package.json").read_text())
    props = package["contributes"]["configuration"]["properties"]
    ours = {k.removeprefix("mose."): v for k, v in props.items() if k.startswith("mose.")}
    schema = settings_schema()
    assert set(ours) - VSCODE_CLIENT_ONLY == set(schema), \
        f"missing: {set(schema) - set(ours)}, unknown: {set(ours) - VSCODE_CLIENT_ONLY - set(schema)}"
    for key, entry in schema.items():
        prop = ours[key]
        types = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
        assert set(types) - {"null"} == {entry["type"]}, (key, types)
        # null is the server's default too (a list default shows as null: "the server's").
        assert prop.get("default") in (entry["default"], None), (key, prop.get("default"))
        for bound in ("minimum", "maximum", "enum"):
            assert prop.get(bound) == entry.get(bound), (key, bound, prop.get(bound))


def test_neovim_help_and_protocol_doc_list_every_setting():
    schema = set(settings_schema())
    help_text = (REPO / "editors" / "nvim" / "doc" / "mose.txt").read_text()
    paragraph = help_text.split("`settings`", 1)[1].split("See docs/protocol.md", 1)[0]
    assert set(re.findall(r"`(\w+)`", paragraph)) == schema
    doc = (REPO / "docs" / "protocol.md").read_text()
    table = doc.split("| key | type | default | meaning |", 1)[1].split("\n\n", 1)[0]
    assert set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)) == schema
