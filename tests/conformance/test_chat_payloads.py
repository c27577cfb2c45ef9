"""The chat payloads held against the platforms' own libraries (issue 10): Slack's Block Kit models in
``slack_sdk`` (PyPI), and the TypeScript types of ``@slack/types``, ``discord-api-types``,
``@microsoft/teams.cards`` and ``@googleapis/chat`` plus Microsoft's ``adaptivecards`` parser (npm).

CI installs them (.ci/run: ``pip install slack-sdk``; ``npm install`` into ``.chat-libs``, exported as
``CHAT_LIBS_DIR``). Where they are not installed, the tests are skipped and say how to run them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.sinks.helpers import hostile_event, make_event
from watcher.sinks.discord import discord_group_payload, discord_payload
from watcher.sinks.google_chat import google_chat_group_payload, google_chat_payload
from watcher.sinks.slack import slack_group_payload, slack_payload
from watcher.sinks.teams import teams_group_payload, teams_payload

HERE = Path(__file__).parent
LIBS = os.environ.get("CHAT_LIBS_DIR")
NPM_HINT = ("set CHAT_LIBS_DIR to an npm prefix with @slack/types discord-api-types adaptivecards "
            "@microsoft/teams.cards @googleapis/chat typescript@5 installed (as .ci/run does), and have node")
URL = "https://media.flora.ai/out.png?sig=a&b=c"


def samples() -> list:
    """Single events of every kind, hostile text, and groups: what the sinks really send."""
    singles = [
        make_event("run.completed"),
        make_event("run.failed", outputs=[{"output_id": "o", "type": "imageUrl", "url": URL},
                                          {"output_id": "t", "type": "text", "url": "a caption :tada:"}]),
        make_event("run.started", status="running", previous_status="pending", outputs=[]),
        hostile_event(),
        make_event("run.failed", error_code=None, error_message=None, technique=None, outputs=[]),
    ]
    group = [make_event("run.failed", run_id=f"run_{i:03d}", error_code="INSUFFICIENT_CREDITS",
                        outputs=[{"output_id": "o", "type": "imageUrl", "url": URL}]) for i in range(60)]
    huge = [hostile_event() for _ in range(3)] + [make_event("run.failed", run_id=f"run_x{i:04d}") for i in range(400)]
    return [("single", e) for e in singles] + [("group", group), ("group", huge)]


def payloads(platform: str) -> list[dict]:
    single = {"slack": slack_payload, "discord": discord_payload, "teams": teams_payload,
              "google_chat": google_chat_payload}[platform]
    grouped = {"slack": slack_group_payload, "discord": discord_group_payload, "teams": teams_group_payload,
               "google_chat": google_chat_group_payload}[platform]
    return [single(item) if kind == "single" else grouped(item) for kind, item in samples()]


def test_slack_blocks_are_valid_block_kit_for_slack_sdk() -> None:
    blocks_mod = pytest.importorskip(
        "slack_sdk.models.blocks", reason="slack_sdk is not installed (pip install slack-sdk; .ci/run does)")
    for payload in payloads("slack"):
        assert isinstance(payload["text"], str) and payload["text"]
        for raw in payload["blocks"]:
            block = blocks_mod.Block.parse(raw)
            assert type(block).__name__ in ("HeaderBlock", "SectionBlock", "ContextBlock"), raw
            block.validate_json()  # raises SlackObjectFormationError beyond Block Kit's limits
        assert len(payload["blocks"]) <= 50


def _node() -> str:
    if LIBS is None or not (Path(LIBS) / "node_modules").is_dir():
        pytest.skip(NPM_HINT)
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed; " + NPM_HINT)
    return node


def test_teams_cards_parse_cleanly_with_microsofts_adaptivecards(tmp_path: Path) -> None:
    node = _node()
    cards = [p["attachments"][0]["content"] for p in payloads("teams")]
    (tmp_path / "cards.json").write_text(json.dumps(cards))
    out = subprocess.run([node, str(HERE / "adaptive_cards_check.mjs"), str(tmp_path / "cards.json")],
                         capture_output=True, text=True, env={**os.environ, "CHAT_LIBS_DIR": str(LIBS)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [[] for _ in cards]  # no unknown element, property or value


TS_HEADER = """\
import type { KnownBlock } from "@slack/types";
import type { RESTPostAPIWebhookWithTokenJSONBody } from "discord-api-types/v10";
import type { IAdaptiveCard } from "@microsoft/teams.cards";
import type { chat_v1 } from "@googleapis/chat";

type SlackMessage = { text: string; blocks?: KnownBlock[] };
type DiscordMessage = RESTPostAPIWebhookWithTokenJSONBody;
type TeamsMessage = {
  type: "message";
  attachments: { contentType: "application/vnd.microsoft.card.adaptive"; contentUrl: null; content: IAdaptiveCard }[];
};
type GoogleChatMessage = chat_v1.Schema$Message;
"""


def test_payloads_type_check_against_the_platforms_typescript_types(tmp_path: Path) -> None:
    node = _node()
    tsc = Path(LIBS) / "node_modules" / "typescript" / "bin" / "tsc"
    if not tsc.exists():
        pytest.skip("typescript is not installed; " + NPM_HINT)
    lines = [TS_HEADER]
    for platform, type_name in (("slack", "SlackMessage"), ("discord", "DiscordMessage"), ("teams", "TeamsMessage"),
                                ("google_chat", "GoogleChatMessage")):
        for i, payload in enumerate(payloads(platform)):
            lines.append(f"export const {platform}_{i}: {type_name} = {json.dumps(payload, ensure_ascii=False)};")
    (tmp_path / "payloads.ts").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "tsconfig.json").write_text(json.dumps({
        "compilerOptions": {"strict": True, "noEmit": True, "skipLibCheck": True, "target": "es2022",
                            "module": "esnext", "moduleResolution": "bundler", "types": [],
                            "baseUrl": ".", "paths": {"*": [f"{LIBS}/node_modules/*"]}},
        "files": ["payloads.ts"],
    }))
    out = subprocess.run([node, str(tsc), "-p", str(tmp_path / "tsconfig.json")], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, (out.stdout + out.stderr)[:4000]
