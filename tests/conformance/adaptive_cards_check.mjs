// Parses Adaptive Cards with Microsoft's own `adaptivecards` library and prints every parse/validation event
// as JSON: [[{event, message}, ...], ...], one list per card. Usage: node adaptive_cards_check.mjs CARDS.json
// with CHAT_LIBS_DIR pointing at an npm prefix that has adaptivecards installed.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(`${process.env.CHAT_LIBS_DIR}/package.json`);
const AC = require("adaptivecards/dist/adaptivecards.js");

const cards = JSON.parse(readFileSync(process.argv[2], "utf8"));
const results = cards.map((json) => {
  const card = new AC.AdaptiveCard();
  const context = new AC.SerializationContext();
  card.parse(json, context);
  const events = [];
  for (let i = 0; i < context.eventCount; i++) {
    const e = context.getEventAt(i);
    events.push({ event: e.event, message: e.message });
  }
  for (const e of card.validateProperties().validationEvents || []) {
    events.push({ event: e.event, message: e.message });
  }
  return events;
});
console.log(JSON.stringify(results));
