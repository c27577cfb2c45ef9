"""Chat and terminal rendering of run.stalled (⏳ and how long the run has been stuck) and of generation runs
(the model where a technique would be). No event loop."""

from __future__ import annotations

import json

import pytest

from watcher import render
from watcher.model import Model, Run, Technique
from watcher.sinks import discord, google_chat, slack, teams
from watcher.transitions import build_event

STALLED = build_event(
    "run.stalled",
    Run(run_id="run_s", status="running", progress=40.0, technique=Technique("tech_1", "CCTV Cam"),
        created_at=1_000, started_at=2_000),
    "running", now_ms=10_000_000, late=False, stalled_for=1_860_000,
)
GENERATION = build_event(
    "run.failed",
    Run(run_id="run_g", status="failed", run_type="generation", model=Model("flux-1.1-pro"), error_code="X",
        started_at=1_000, completed_at=9_000),
    "running", now_ms=10_000, late=False,
)


def test_the_text_line_shows_the_marker_and_how_long_the_run_is_stuck():
    assert render.text_line(STALLED) == "⏳ run.stalled · CCTV Cam · run_s · stuck 31m 00s"


@pytest.mark.parametrize("payload", [slack.slack_payload, discord.discord_payload, teams.teams_payload,
                                     google_chat.google_chat_payload])
def test_every_chat_payload_has_the_marker_and_the_stuck_time(payload):
    text = json.dumps(payload(STALLED), ensure_ascii=False)
    assert "⏳" in text and "stuck 31m 00s" in text and "run_s" in text


def test_a_generation_shows_its_model():
    assert render.text_line(GENERATION).startswith("❌ run.failed · flux-1.1-pro · run_g · X")
