// Parses Adaptive Cards with Microsoft's own `adaptivecards` library. For each card it prints the parse and
// validation events, and every text the library would run through its markdown processor when rendering (a
// TextBlock's text when its `useMarkdown` is on; a FactSet's fact names and values, which it renders as such
// TextBlocks; a RichTextBlock's TextRuns are never processed):
// [{"events": [{event, message}, ...], "markdown": ["text", ...]}, ...], one entry per card.
// Usage: node adaptive_cards_check.mjs CARDS.json, with CHAT_LIBS_DIR pointing at an npm prefix that has
// adaptivecards installed.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";

const require = createRequire(`${process.env.CHAT_LIBS_DIR}/package.json`);
const AC = require("adaptivecards/dist/adaptivecards.js");

function markdownTexts(element, out) {
  if (element instanceof AC.TextBlock) {
    if (element.useMarkdown && element.text) out.push(element.text);
  } else if (element instanceof AC.FactSet) {
    const probe = new AC.TextBlock(); // what the FactSet renders each name and value with
    for (const fact of element.facts) {
      if (probe.useMarkdown) out.push(fact.name, fact.value);
    }
  } else if (element instanceof AC.RichTextBlock) {
    for (let i = 0; i < element.getInlineCount(); i++) {
      const inline = element.getInlineAt(i);
      if (!(inline instanceof AC.TextRun) && inline.text) out.push(inline.text); // an unknown inline: assume markdown
    }
  }
  if (typeof element.getItemCount === "function") {
    for (let i = 0; i < element.getItemCount(); i++) markdownTexts(element.getItemAt(i), out);
  }
  return out;
}

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
  return { events, markdown: markdownTexts(card, []) };
});
console.log(JSON.stringify(results));
