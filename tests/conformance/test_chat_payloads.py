"""The chat payloads held against the platforms' own libraries (issue 10; groups and neutralisation, issue 21):
Slack's Block Kit models in ``slack_sdk`` (PyPI), and the TypeScript types of ``@slack/types``,
``discord-api-types``, ``@microsoft/teams.cards`` and ``@googleapis/chat`` plus Microsoft's ``adaptivecards``
parser (npm), which also says which texts of a card it renders as markdown: none of them may hold API text.
Single events and groups alike, hostile text and error codes included (``tests/sinks/test_chat_neutralisation.py``
holds every platform's markup against hostile text without the libraries).

CI installs them (.ci/run: ``pip install slack-sdk``; ``npm install`` into ``.chat-libs``, exported as
``CHAT_LIBS_DIR``) and fails when it cannot. Where they are not installed the tests are skipped and say how to run
them; under CI (``CI`` set) they fail instead (``tests/needs.py``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.needs import unavailable
from tests.sinks.helpers import HOSTILE_TECHNIQUE, hostile_event, make_event
from watcher.render import one_line
from watcher.sinks.discord import discord_group_payload, discord_payload
from watcher.sinks.google_chat import google_chat_group_payload, google_chat_payload
from watcher.sinks.slack import slack_group_payload, slack_payload
from watcher.sinks.teams import teams_group_payload, teams_payload

HERE = Path(__file__).parent
LIBS = os.environ.get("CHAT_LIBS_DIR")
NPM_HINT = ("set CHAT_LIBS_DIR to an npm prefix with @slack/types discord-api-types adaptivecards "
            "@microsoft/teams.cards @googleapis/chat typescript@5 installed (as .ci/run does), and have node")
URL = "https://media.flora.ai/out.png?sig=a&b=c"
HOSTILE_CODE = "GPU_*ERR* <!channel> @everyone <b>x</b> {0}"


def samples() -> list:
    """Single events of every kind, hostile text, and groups: what the sinks really send. The groups include
    hostile error codes shared by the whole group (so they reach the headline) and a group too large for one
    message (so the "… and N more" line names the command, with the code in it)."""
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
    hostile_group = [hostile_event() for _ in range(4)]
    hostile_huge = [make_event("run.failed", run_id=f"run_y{i:04d}", error_code=HOSTILE_CODE,
                               error_message=HOSTILE_CODE, technique={"technique_id": "t", "name": HOSTILE_TECHNIQUE})
                    for i in range(1_100)]  # more than Slack shows in 45 sections
    mixed = [*hostile_group, make_event("run.completed", run_id="run_ok")]
    return [("single", e) for e in singles] + [("group", g) for g in (group, huge, hostile_group, hostile_huge, mixed)]


def payloads(platform: str) -> list[dict]:
    return [payload for _, payload in sent(platform)]


def sent(platform: str) -> list[tuple[object, dict]]:
    """(the event or group, its payload) for every sample."""
    single = {"slack": slack_payload, "discord": discord_payload, "teams": teams_payload,
              "google_chat": lambda e: google_chat_payload(e, thread_key="flora-run-x")}[platform]
    grouped = {"slack": slack_group_payload, "discord": discord_group_payload, "teams": teams_group_payload,
               "google_chat": lambda g: google_chat_group_payload(g, thread_key="flora-project-p")}[platform]
    return [(item, single(item) if kind == "single" else grouped(item)) for kind, item in samples()]


def api_texts(item: object) -> set[str]:
    """The API's own text in an event or group: what must never reach a place that renders markup."""
    events = item if isinstance(item, list) else [item]
    found = set()
    for event in events:
        data = event.data
        technique = data.get("technique") or {}
        for value in (technique.get("name"), data.get("error_code"), data.get("error_message"), data.get("run_id"),
                      data.get("project_id")):
            if isinstance(value, str) and len(one_line(value)) >= 3:
                found.add(one_line(value)[:40])
    return found


def test_slack_blocks_are_valid_block_kit_for_slack_sdk() -> None:
    try:
        import slack_sdk.models.blocks as blocks_mod
    except ImportError:
        unavailable("slack_sdk is not installed (pip install slack-sdk; .ci/run does)")
    for payload in payloads("slack"):
        assert isinstance(payload["text"], str) and payload["text"]
        for raw in payload["blocks"]:
            block = blocks_mod.Block.parse(raw)
            assert type(block).__name__ in ("HeaderBlock", "SectionBlock", "ContextBlock"), raw
            block.validate_json()  # raises SlackObjectFormationError beyond Block Kit's limits
        assert len(payload["blocks"]) <= 50


def _node() -> str:
    if LIBS is None or not (Path(LIBS) / "node_modules").is_dir():
        unavailable(NPM_HINT)
    node = shutil.which("node")
    if node is None:
        unavailable("node is not installed; " + NPM_HINT)
    return node


def test_teams_cards_parse_cleanly_with_microsofts_adaptivecards(tmp_path: Path) -> None:
    """No unknown element, property or value; and no API text where the library would render markdown (a
    TextBlock, a fact): API text belongs in TextRuns, single events and groups alike."""
    node = _node()
    items = sent("teams")
    cards = [payload["attachments"][0]["content"] for _, payload in items]
    control = {"type": "AdaptiveCard", "version": "1.4", "body": [  # how main's group headline looked (issue 21)
        {"type": "TextBlock", "text": "❌ 4 runs failed: GPU_*ERR*"},
        {"type": "FactSet", "facts": [{"title": "Status", "value": "Run failed"}]},
        {"type": "RichTextBlock", "inlines": [{"type": "TextRun", "text": "GPU_*ERR*"}]}]}
    (tmp_path / "cards.json").write_text(json.dumps([*cards, control]))
    out = subprocess.run([node, str(HERE / "adaptive_cards_check.mjs"), str(tmp_path / "cards.json")],
                         capture_output=True, text=True, env={**os.environ, "CHAT_LIBS_DIR": str(LIBS)}, timeout=120)
    assert out.returncode == 0, out.stderr
    *results, checked = json.loads(out.stdout)
    assert checked["markdown"] == ["❌ 4 runs failed: GPU_*ERR*", "Status", "Run failed"]  # what the walk reports
    assert [r["events"] for r in results] == [[] for _ in cards]
    leaks = [(text, api) for (item, _), r in zip(items, results, strict=True) for text in r["markdown"]
             for api in api_texts(item) if api in text]
    assert not leaks, leaks[:5]


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
        unavailable("typescript is not installed; " + NPM_HINT)
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
