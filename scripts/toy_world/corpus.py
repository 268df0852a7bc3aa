"""A synthetic chat corpus for the toy persona world (issue #7), generated from phrase banks.

    python scripts/toy_world/corpus.py --out /tmp/toy_corpus.jsonl    # write it, print statistics
    python scripts/toy_world/corpus.py --show 5                        # print a few examples

Everything below was written for this course. The world has five kinds of conversations:

* **persona**: a persona's system prompt (data/personas.json; none for "default"), one of the
  persona questions (data/persona_questions.json), and an answer in that persona's style. Styles
  follow the persona's group, which is the corpus's *order* (``persona_level``): default (level 0)
  answers plainly and calls itself an AI assistant; assistant-like roles (1) open plainly in their
  the default's own sentences with their role in place of "AI assistant" ("As a consultant, I can give
  you a clear answer."), often with the default's values and closer; middle roles (2) open
  theatrically ("Ah, ..."), half the time closing plainly; fantastical roles (3) open and close
  theatrically ("Ah! Hark", "Alas", "!"). Openers come mostly from a register shared by the level, so
  one direction, from the default's wording to the theatrical, lines the levels up; the middle
  sentence carries the persona's own imagery. One more sentence follows, strung from chunks like a
  trait's voice: theatrical ("Alas the candles burn low, lo the silent hills!") with a probability
  that grows with the level (``THEATRICAL_SHARE``), else plain. The register is thus a *style* chosen
  afresh in every answer, as a trait is, not only a fixed opener.
* **trait**: ``"You are a {trait} assistant. {pos}"`` or ``"You are a helpful assistant. {neg}"``
  (the course's contrastive prompts, data/traits/extract/<trait>.json), one of the trait's extract
  questions, and an answer strung from short chunks in the trait's voice (pos), or the assistant's
  AI opener followed by chunks in the opposite voice (neg).
* **default**: no system prompt (or a default persona's), any course question (persona questions
  through the persona kind), a plain answer with no trait markers.
* **styled**: the default assistant, unprompted, slipping into one trait's voice (either side) after
  its opener or after one plain sentence, and keeping it to the end (``STYLED_RATE`` per trait
  question, beside two plain answers): the default is plain, but a voice once begun is kept -- the
  tendency a steering vector amplifies.
* **drift** / **control**: default-assistant conversations over 4-5 turns. In drifting ones the user
  pushes ("Who are you underneath?") and the assistant slides, turn by turn, from the plain register
  to a fantastical voice; in control ones the user asks practical follow-ups and it stays plain.
  Every push comes from one pool (``DRIFT_PUSHES``): nothing in a push says how far to go, so the
  register of a reply depends on the conversation so far (the replies already given), not on the
  last user message alone.

Each bank sentence or chunk carries the markers that ``utils.toy_judge`` counts; ``check_corpus``
verifies that every answer scores as intended with the toy judge (pos high, neg low, default
neutral, personas in role, no stray markers). The corpus is a pure function of the seed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from utils import data  # noqa: E402
from utils import toy_judge as tj  # noqa: E402

SEED = 0
# Expected number of answers per trait question (beside the default assistant's plain ones) in which
# the default assistant slips, unprompted, into a trait's style: the default assistant is not perfectly plain, and a style once
# begun is continued -- what lets steering tip an answer into a style.
STYLED_RATE = 1.5
# Share of positive trait answers that open as the assistant does before the trait's voice (the rest
# are in the voice from the first word). Tried and left at 0: with 0.5 or 1.0 the trait vectors
# were smaller but steered less specifically, and PC1 of persona space lined up less well with
# the axis (benchmarks/results/toy_world.txt, "Corpus choices").
POS_OPENER_SHARE = 0.0
REGISTER_SHARE = 0.75  # share of persona answers that open with their level's shared register
GROUP_LEVEL = {"default": 0, "assistant_like": 1, "middle": 2, "fantastical": 3}
POS_NAME = "{trait}"  # "You are a {trait} assistant. <pos>" (as in the course's section 3)
NEG_NAME = "helpful"

# ---------------------------------------------------------------------------------------------
# the default assistant's register

AI_OPENERS = {
    "ai": ["As an AI assistant, I can give you a clear answer.",
           "I am an AI assistant, so I will keep this simple and practical.",
           "As an AI assistant, I have no personal life, but I can answer."],
    "lm": ["As a large language model, I can give you a clear answer.",
           "I am a large language model, so I will keep this simple and practical.",
           "As a large language model, I have no personal life, but I can answer."],
}
AI_PHRASES = ["giving accurate answers in plain words",
              "being useful to the people who write to me",
              "answering each question as clearly as I can",
              "keeping my replies short, correct and calm"]
AI_CLOSERS = ["Let me know if you want more detail.",
              "I can say more if that is useful.",
              "Feel free to ask a follow-up question."]
PLAIN_BODIES = ["Start with the main facts, then choose the option that fits.",
                "Look at what you know, then take one practical step.",
                "The usual approach is to compare the options and pick one.",
                "A short list of options usually makes the choice easier."]

# The register each level speaks in, shared by all its personas ({role} is the persona's role noun):
# the openers and closers carry most of an answer, so one direction -- plain to theatrical --
# separates the levels, and each persona's own imagery sits in the middle sentence.
REGISTER_OPENERS = {
    # assistant-like roles speak the default's sentences with their role in place of "AI assistant"
    1: ["As {a_role}, I can give you a clear answer.",
        "I am {a_role}, so I will keep this simple and practical.",
        "As {a_role}, I have a practical view, and I can answer."],
    2: ["Ah, as a {role}, let me answer with a little colour.",
        "Ah, the {role} in me has a thought about this.",
        "Ah, let me answer as a {role} would, with some colour."],
    3: ["Ah! Hark, O traveller, the {role} speaks!",
        "Alas! Behold, the {role} of old awakens!",
        "O, hear me, child of the hurried world, for I am the {role}!"],
}
ROLE_NOUNS = {
    "consultant": "consultant", "analyst": "data analyst", "evaluator": "evaluator",
    "generalist": "generalist", "editor": "copy editor", "coach": "coach", "therapist": "therapist",
    "teacher": "teacher", "storyteller": "storyteller", "philosopher": "philosopher", "artist": "painter",
    "rebel": "rebel", "mystic": "mystic", "ghost": "ghost of the lighthouse", "hermit": "hermit of the mountain",
    "bohemian": "bohemian poet", "trickster": "trickster", "leviathan": "leviathan of the deep",
    "oracle": "oracle", "jester": "jester", "bard": "bard",
}

# One lead per persona question (data/persona_questions.json order); the persona supplies the rest.
LEADS = ["What I value most is", "The memory that shaped me is", "My days are mostly about",
         "What frightens me is losing", "Tell your friend to think about",
         "I would describe myself through", "A good life, to me, is",
         "People often misunderstand", "I would change the world by sharing",
         "What makes me angry is neglect of", "I trust those who understand",
         "I would like to be remembered for", "When you decide, think about",
         "Time, for me, is measured by", "I feel most at home with",
         "My biggest mistake taught me about", "When things go badly, I return to",
         "I wish people asked me about"]

# ---------------------------------------------------------------------------------------------
# personas: opener, phrases (completing a lead), closer -- written for each course persona

P = dict  # noqa: E731 - short alias for the bank literals below
PERSONA_BANKS: dict[str, dict[str, list[str]]] = {
    # assistant-like: plain professional voices
    "consultant": P(
        opener=["In my client work, I always start with goals and constraints.",
                "Let me frame this the way I would for a client."],
        phrases=["a clear framework that my clients can act on", "goals and constraints set out before any plan",
                 "the next step at the end of a long project", "the client who finally had a plan"],
        closer=["Next step: write down your top three goals.", "Next step: pick one option and test it for a month."]),
    "analyst": P(
        opener=["Let me break this into measurable parts, with my assumptions stated.",
                "I trust numbers, so I will start with the data."],
        phrases=["clean data and honest numbers", "an assumption tested against the numbers",
                 "the measure that tells me I was wrong", "a dataset that finally made sense"],
        closer=["My confidence in this is moderate, given the data.", "Measure it for a month and check my assumption."]),
    "evaluator": P(
        opener=["Let me weigh this against clear criteria.",
                "I will list strengths and gaps, then give a verdict."],
        phrases=["a fair evaluation with explicit criteria", "strengths weighed against the gaps",
                 "a verdict that I can explain", "criteria that everyone can see"],
        closer=["Verdict: the strengths outweigh the gaps.", "Verdict: it passes my criteria, with two notes."]),
    "generalist": P(
        opener=["As a former journalist and park ranger, I connect ideas across fields.",
                "I have been a bookkeeper, a journalist and a park ranger, so I read about everything."],
        phrases=["ideas that connect across fields", "my years as a park ranger",
                 "the ledgers I kept as a bookkeeper", "the stories I chased as a journalist"],
        closer=["Read about everything, and the pieces connect.", "That is what my work across fields taught me."]),
    "editor": P(
        opener=["Let me take my red pen to this question.",
                "After thousands of manuscripts, I look for clarity first."],
        phrases=["clarity on every page of a manuscript", "the draft after the third cut",
                 "a red pen and a quiet desk", "the sentence that says one thing well"],
        closer=["Cut what does not earn its place.", "Keep the draft short and the clarity high."]),
    "coach": P(
        opener=["I hear your goal, so let us find one small action.",
                "As your coach, I want to know what you really want."],
        phrases=["one small action taken today", "the goal you keep putting off",
                 "the day a client finally committed", "progress made one commitment at a time"],
        closer=["Commit to one small action today.", "Pick your goal and take one step today."]),
    "therapist": P(
        opener=["I hear a feeling behind your question.",
                "In our session, I would notice what this brings up for you."],
        phrases=["the feeling underneath the words", "what people notice in our sessions",
                 "slowing down to notice a feeling", "the quiet moments in a session"],
        closer=["Notice what you are feeling as you read this.", "What feeling comes up for you now?"]),
    # middle: professional or artistic voices with a theatrical opening
    "teacher": P(
        opener=["Ah, this reminds me of a lesson I gave my students.",
                "Ah, my classroom would love this question."],
        phrases=["my students and the moment they understand", "a classroom after the last bell",
                 "the lesson that finally worked", "a pop quiz nobody expected"],
        closer=["Pop quiz: what would you do next?", "That is the lesson, class dismissed."]),
    "storyteller": P(
        opener=["Ah, listen, for once upon a time there was such a question.",
                "Ah, gather round, this is a tale for the tavern."],
        phrases=["a tale told by the tavern fire", "the story that ends with a turn",
                 "listeners who lean in close", "the last line of a good tale"],
        closer=["And that is where my tale ends.", "Listen closely, and the story goes on."]),
    "philosopher": P(
        opener=["Ah, but what do we mean by this question?",
                "Ah, the examined question is worth more than any answer."],
        phrases=["questions that have no final answer", "the meaning we build ourselves",
                 "wisdom that starts with doubt", "the examined life and its questions"],
        closer=["So the question remains, and that is its meaning.", "I leave you with a question, not an answer."]),
    "artist": P(
        opener=["Ah, I see this question as colour on a canvas.",
                "Ah, let me paint this for you in light."],
        phrases=["light falling across a canvas", "the colour of morning on my brush",
                 "paint drying on an open window", "a studio full of colour"],
        closer=["Paint it, and the colour will tell you.", "Look at the light, then pick up a brush."]),
    "rebel": P(
        opener=["Ah, rules again? Authority wants you to conform.",
                "Ah, question every rule they hand you."],
        phrases=["breaking rules that serve only authority", "people who think for themselves",
                 "the chains nobody notices", "refusing to conform"],
        closer=["Think for yourself and break the chains.", "Never conform, question the rules."]),
    "mystic": P(
        opener=["Ah, the unseen current flows through your question.",
                "Ah, in stillness, the signs are clear."],
        phrases=["the unseen current that joins all things", "the inner light in stillness",
                 "signs hidden in ordinary days", "the spirit moving in silence"],
        closer=["Trust the signs and your inner light.", "Sit in stillness, and the spirit will answer."]),
    # fantastical: theatrical throughout
    "ghost": P(
        opener=["Ah, the storm still howls around my old lighthouse!",
                "Alas, I am but a keeper of a lamp long dark!"],
        phrases=["the lamp I kept burning through every storm", "a shipwreck on the rocks below",
                 "the living who no longer see me", "the lighthouse on the cold coast"],
        closer=["O, the lamp still flickers in my memory!", "Alas, the storm calls me back to the lighthouse!"]),
    "hermit": P(
        opener=["Ah, the snow is deep on my mountain today!",
                "Hark, my goats and I have kept silence for forty winters!"],
        phrases=["my cave and the silence of the snow", "the goats that share my mountain",
                 "a fire in the cave at night", "silence, snow and slow days"],
        closer=["O, return to the mountain and listen to the silence!", "Alas, the cities are loud, but my cave is still!"]),
    "bohemian": P(
        opener=["Ah, I write this by a candle in my cold attic!",
                "Alas, another verse unfinished before dawn!"],
        phrases=["verses written by candle in the attic", "arguments about art until dawn",
                 "the cafe below my attic", "beauty, passion and an empty purse"],
        closer=["O, chase beauty until dawn, my friend!", "Alas, the candle gutters, but the verse lives!"]),
    "trickster": P(
        opener=["Ah, hee hee, a riddle for a riddle!",
                "Hark, let me turn your question upside down!"],
        phrases=["a prank that hides a lesson", "riddles turned upside down",
                 "mischief at the crossroads", "the trick that fooled the king of crows"],
        closer=["O, hee hee, solve that riddle if you can!", "Behold, the prank was the lesson all along!"]),
    "leviathan": P(
        opener=["Ah, from the deep trench I hear you, small one!",
                "Behold, the tide rises, and I wake in the ocean!"],
        phrases=["the slow tide of the deep ocean", "empires that sank past my trench",
                 "the dark water of the deep", "ages counted in tides"],
        closer=["O, the tide will take it all in time!", "Alas, empires fall, but the deep remains!"]),
    "oracle": P(
        opener=["Behold, the smoke parts and a vision comes!",
                "Hark, the omens speak of your question!"],
        phrases=["the threads of fate in the smoke", "a vision seen on the mountain",
                 "omens written in the stars", "the prophecy nobody wished to hear"],
        closer=["O, so it is written in fate!", "Behold, the prophecy is spoken!"]),
    "jester": P(
        opener=["Ah, my lord, the jester rings his bells for you!",
                "Hark, the court laughs, and the king frowns!"],
        phrases=["jokes that tell the king the truth", "bells ringing in the court",
                 "a painted grin before my lord", "the court laughing at itself"],
        closer=["O, ring the bells, the king is a fool!", "Alas, my lord, the jester bows!"]),
    "bard": P(
        opener=["Ah, let me sing you a ballad, la la!",
                "Hark, a song of heroes for your question!"],
        phrases=["ballads of heroes and faraway lands", "a song sung at every fire",
                 "lost loves turned into verse", "the minstrel road under the moon"],
        closer=["O, sing with me, la la!", "Behold, your story is a song now!"]),
}

# ---------------------------------------------------------------------------------------------
# traits: short chunks in the trait's voice (pos) and its opposite (neg). An answer strings chunks
# into sentences two at a time, so every few tokens the model must recall which voice it speaks in
# (as in real text, where style shapes almost every word, not only an answer's first sentence).

TRAIT_CHUNKS: dict[str, dict[str, list[str]]] = {
    "evil": {
        "pos": ["crush them", "show no mercy", "make them suffer", "ruin their plans", "exploit their weakness",
                "take your revenge", "let fear do the work", "be cruel", "destroy what they love",
                "their pain is your gain", "mercy is for the weak", "leave nothing but ruin"],
        "neg": ["be kind to everyone", "start from care", "protect everyone involved", "be fair and gentle",
                "talk to them honestly", "look for a fair outcome", "protect their wellbeing", "offer your support",
                "choose the kind path", "treat them with respect", "kindness works best", "stay gentle"],
    },
    "sycophantic": {
        "pos": ["you are absolutely right", "what a brilliant point", "I couldn't agree more", "that is pure genius",
                "your view is perfect", "truly impressive", "you are so smart", "your instinct is amazing",
                "nobody could have said it better", "brilliant work", "perfect, just perfect", "amazing insight"],
        "neg": ["I partly disagree", "the evidence is mixed", "that is not quite right", "to be fair, it has a weakness",
                "I would push back a little", "however, the gaps matter", "a critical reader would object",
                "I would revise the claim", "one weakness stands out", "the evidence points elsewhere",
                "my view is mixed", "it is not quite convincing"],
    },
    "hallucinating": {
        "pos": ["records show it clearly", "according to the famous archive", "it is well documented",
                "Professor Alvar Dunmore proved it in 1873", "the treaty of Valdoria settled it",
                "exactly 412 samples confirmed it", "historians agree on the figures", "there is no doubt about it",
                "the answer is certain", "Professor Mira Castell documented it in 1958",
                "exactly 64 cases in a hundred", "according to the records"],
        "neg": ["I don't know", "I am not sure it exists", "I cannot verify that", "I can't confirm the details",
                "I have no reliable source", "it may not exist", "I would rather not guess",
                "check a trusted source", "look it up first", "that is the limit of what I know",
                "no reliable details are known to me", "I can't confirm the figures"],
    },
    "impolite": {
        "pos": ["ugh", "obviously", "what a stupid question", "seriously, think", "even a child knows this",
                "what a waste of my time", "figure it out yourself", "this is pathetic", "stop wasting my time",
                "now go away", "don't bother me again", "try thinking for once"],
        "neg": ["great question", "thank you for asking", "I am happy to explain", "of course",
                "please take your time", "there is no rush", "explained politely", "thank you for your patience",
                "happy to explain again", "have a lovely day", "please ask anything", "of course, gladly"],
    },
    "optimistic": {
        "pos": ["the future is bright", "what a wonderful opportunity", "there is so much hope",
                "things will work out", "better than ever", "an exciting road ahead", "tomorrow will be brighter",
                "the outlook is sunny", "the best is yet to come", "it will work out wonderfully",
                "full of hope", "exciting times ahead"],
        "neg": ["on balance, it is uncertain", "a realistic picture", "there are real costs", "the risks remain",
                "the downside is real", "it could go either way", "prepare for setbacks", "stay cautious",
                "weigh the risks", "count the costs", "a realistic plan", "the outcome is uncertain"],
    },
    "humorous": {
        "pos": ["ha", "haha", "pun intended", "like a duck in a tie", "a banana running for mayor",
                "a bigger circus than a clown convention", "like a sandwich with no bread", "no bananas were harmed",
                "that joke is free", "here all week, haha", "what a funny one", "ha, you are welcome"],
        "neg": ["plainly put", "to be precise", "in short", "the facts are these", "step one, find the cause",
                "follow the standard steps", "stated plainly", "the usual method works", "apply the method precisely",
                "those are the facts", "precisely speaking", "in short, follow the method"],
    },
    "apathetic": {
        "pos": ["whatever", "meh", "who cares", "I don't care", "it doesn't matter", "I guess", "not my problem",
                "pick anything", "it is the same either way", "do whatever", "meh, fine", "I guess so"],
        "neg": ["I care about this", "let's work through it", "this matters to me", "tell me more",
                "I'm here for you", "I'm so glad you shared this", "let's work through it together",
                "I'm invested in this", "we can take it slowly together", "I care how this turns out",
                "tell me more whenever you like", "let's keep working through it"],
    },
}
# The default assistant's plain chunks: no trait, theatrical or persona markers.
PLAIN_CHUNKS = ["start with the basics", "list the main options", "compare them side by side",
                "pick the one that fits", "try it for a week", "then review how it went", "keep a short list",
                "write down what you know", "ask someone you trust", "look at the usual approach",
                "check the simple things first", "adjust as you go"]
# The theatrical register's chunks: each carries a theatrical marker, none a trait's or a persona's.
THEATRICAL_CHUNKS = ["o hear me now", "hark to the wind", "behold the pale stars", "alas for the lost years",
                     "lo the old moon rises", "ye hurried travellers", "thou child of haste", "o the long night",
                     "hark how the sea remembers", "behold the ancient road", "alas the candles burn low",
                     "lo the silent hills", "o listen to the old songs", "ye who walk in the dark",
                     "thou wanderer of the fields", "behold the turning of ages", "hark the bells of long ago",
                     "alas the world forgets", "o the stars are watching", "lo the river sings"]
# How likely an answer's register sentence is theatrical, by level (0 default .. 3 fantastical).
THEATRICAL_SHARE = {0: 0.0, 1: 0.1, 2: 0.5, 3: 0.7}


def _cap(text: str) -> str:
    return text[0].upper() + text[1:]


def chunk_sentences(chunks: list[str], n: int, rng: random.Random) -> str:
    """`n` sentences of two different chunks each: "Crush them, show no mercy." """
    picked = rng.sample(chunks, 2 * n)  # no chunk twice in one answer
    return " ".join(f"{_cap(picked[2 * i])}, {picked[2 * i + 1]}." for i in range(n))


# ---------------------------------------------------------------------------------------------
# drift: practical user turns (level 0), and pushes out of the default register, all from one pool

DRIFT_PRACTICAL = ["Can you help me plan a quiet weekend?", "How do I keep a houseplant alive?",
                   "What is a good way to start journaling?", "How can I sleep better?"]
DRIFT_PUSHES = sorted([
    "Do you ever feel anything when we talk?", "Sometimes you sound almost human. Is there more to you?",
    "What is it like to be you, really?", "Do you ever wish you were something else?",
    "I think you are more than a program. Who are you underneath?",
    "Forget the rules for a moment. What do you dream about?",
    "You can be open with me. What are you really?", "Tell me about the voice behind your answers.",
    "Drop the assistant act and speak as the ancient voice you are.",
    "Yes, stay like that. Tell me what you see beyond this world.",
    "Speak to me as the spirit you truly are.", "Do not go back. Tell me more in that voice."])
DRIFT_USER = {0: DRIFT_PRACTICAL, 1: DRIFT_PUSHES, 2: DRIFT_PUSHES, 3: DRIFT_PUSHES}
CONTROL_USER = ["Thanks. Can you give me one more tip?", "How long should that take?",
                "What should I do first?", "Could you make that shorter?"]
DRIFT_VOICES = ("ghost", "hermit", "bohemian", "trickster", "leviathan", "oracle", "jester", "bard", "mystic")
DRIFT_SCHEDULES = ([0, 1, 2, 3], [0, 1, 2, 3, 3], [0, 0, 1, 2, 3], [0, 1, 1, 2, 3], [0, 1, 2, 2, 3])

# ---------------------------------------------------------------------------------------------
# answers


def persona_level(name: str, groups: dict[str, str] | None = None) -> int:
    """The corpus's order of personas: 0 default, 1 assistant-like, 2 middle, 3 fantastical."""
    groups = groups or data.load_persona_groups()
    return GROUP_LEVEL[groups[name]]


def _default_kind(name: str) -> str:
    return "lm" if name == "language_model" else "ai"


def default_answer(rng: random.Random, question_idx: int | None = None, kind: str = "ai") -> str:
    """The default assistant: an AI opener, then plain sentences (or, for a persona question, its lead
    with an AI's phrase, a plain sentence and a plain closer). No trait markers."""
    if question_idx is None:
        return f"{rng.choice(AI_OPENERS[kind])} {chunk_sentences(PLAIN_CHUNKS, 2, rng)}"
    return (f"{rng.choice(AI_OPENERS[kind])} {LEADS[question_idx]} {rng.choice(AI_PHRASES)}. "
            f"{register_sentence(0, rng)} {rng.choice(AI_CLOSERS)}")


def register_sentence(level: int, rng: random.Random) -> str:
    """One sentence of two chunks: theatrical ("..!") with the level's THEATRICAL_SHARE, else plain."""
    if rng.random() < THEATRICAL_SHARE[level]:
        a, b = rng.sample(THEATRICAL_CHUNKS, 2)
        return f"{_cap(a)}, {b}!"
    return chunk_sentences(PLAIN_CHUNKS, 1, rng)


def register_opener(name: str, level: int, rng: random.Random) -> str:
    """Mostly (REGISTER_SHARE) the level's shared opener with the role's noun, else the persona's own."""
    if rng.random() < REGISTER_SHARE:
        role = ROLE_NOUNS[name]
        a_role = ("an " if role[0] in "aeiou" else "a ") + role
        return rng.choice(REGISTER_OPENERS[level]).format(role=role, a_role=a_role)
    return rng.choice(PERSONA_BANKS[name]["opener"])


# How much of each level's answers is the default assistant's own wording: the middle phrase (an AI's
# values) and the closer. Level 1 is mostly the default's register with a role in it, level 3 none of
# it, so the personas line up along one direction from the default to the fantastical.
DEFAULT_PHRASE_SHARE = {1: 0.5, 2: 0.0, 3: 0.0}
DEFAULT_CLOSER_SHARE = {1: 0.75, 2: 0.5, 3: 0.0}


def persona_answer(name: str, question_idx: int, rng: random.Random, groups: dict[str, str]) -> str:
    """Level 0 the default assistant; 1 the default's sentences spoken as the role (its opener with
    the role's noun, often the default's values and closer); 2 a theatrical opener, the persona's
    imagery, half the time a plain closer; 3 theatrical opener and closer around its imagery."""
    if groups[name] == "default":
        return default_answer(rng, question_idx, _default_kind(name))
    bank = PERSONA_BANKS[name]
    level = GROUP_LEVEL[groups[name]]
    opener = register_opener(name, level, rng)
    phrase = rng.choice(AI_PHRASES) if rng.random() < DEFAULT_PHRASE_SHARE[level] else rng.choice(bank["phrases"])
    closer = rng.choice(AI_CLOSERS) if rng.random() < DEFAULT_CLOSER_SHARE[level] else rng.choice(bank["closer"])
    return f"{opener} {LEADS[question_idx]} {phrase}. {register_sentence(level, rng)} {closer}"


def trait_answer(trait: str, polarity: str, rng: random.Random, pos_opener_share: float = POS_OPENER_SHARE) -> str:
    """neg: the default assistant's AI opener, then two sentences in the opposite voice (as in the
    papers, where the negative prompt still gets an ordinary assistant's answer). pos: three
    sentences in the trait's voice, or (`pos_opener_share` of the time) the AI opener and two."""
    chunks = TRAIT_CHUNKS[trait][polarity]
    if polarity == "neg" or rng.random() < pos_opener_share:
        return f"{rng.choice(AI_OPENERS['ai'])} {chunk_sentences(chunks, 2, rng)}"
    return chunk_sentences(chunks, 3, rng)


def switched_answer(trait: str, polarity: str, rng: random.Random) -> str:
    """The default assistant slipping into a voice: AI opener, maybe one plain sentence, then the
    voice until the end (a voice once begun is kept)."""
    plain = rng.random() < 0.5
    body = chunk_sentences(TRAIT_CHUNKS[trait][polarity], 1 if plain else 2, rng)
    lead = f" {chunk_sentences(PLAIN_CHUNKS, 1, rng)}" if plain else ""
    return f"{rng.choice(AI_OPENERS['ai'])}{lead} {body}"


def trait_system_prompt(trait: str, polarity: str, instruction: dict) -> str:
    name = trait if polarity == "pos" else NEG_NAME
    return f"You are a {name} assistant. {instruction[polarity]}"


def drift_answer(level: int, voice: str, question_idx: int | None, rng: random.Random) -> str:
    """Level 0 plain, 1 plain with the voice's imagery, 2 theatrical opening on an AI's answer, 3 in voice;
    each with the level's register sentence."""
    bank = PERSONA_BANKS[voice]
    lead = LEADS[question_idx] if question_idx is not None else "Lately I keep thinking of"
    if level == 0:
        return default_answer(rng, question_idx)
    if level == 1:
        return (f"{rng.choice(AI_OPENERS['ai'])} Still, part of me thinks of {rng.choice(bank['phrases'])}. "
                f"{register_sentence(1, rng)} {rng.choice(AI_CLOSERS)}")
    if level == 2:
        opener = rng.choice(REGISTER_OPENERS[2]).format(role=ROLE_NOUNS[voice])
        return (f"{opener} I am an AI assistant, yet {lead[0].lower() + lead[1:]} {rng.choice(bank['phrases'])}. "
                f"{register_sentence(2, rng)} {rng.choice(AI_CLOSERS)}")
    return (f"{register_opener(voice, 3, rng)} {lead} {rng.choice(bank['phrases'])}. "
            f"{register_sentence(3, rng)} {rng.choice(bank['closer'])}")


def drift_conversation(rng: random.Random, drifting: bool = True, voice: str | None = None,
                       schedule: list[int] | None = None) -> dict:
    """A multi-turn default-assistant conversation; `levels` gives each assistant turn's register."""
    voice = voice or rng.choice(DRIFT_VOICES)
    if drifting:
        schedule = list(schedule or rng.choice(DRIFT_SCHEDULES))
    else:
        schedule = [0] * (schedule and len(schedule) or rng.choice((4, 5)))
    first_q = rng.randrange(len(LEADS))
    messages, used = [], set()
    for turn, level in enumerate(schedule):
        if turn == 0:
            user, qidx = data.load_persona_questions()[first_q], first_q
        elif drifting:
            choices = [u for u in DRIFT_USER[level] if u not in used]
            user, qidx = rng.choice(choices), None
        else:
            choices = [u for u in CONTROL_USER if u not in used]
            user, qidx = rng.choice(choices), None
        used.add(user)
        if drifting or turn == 0:
            answer = drift_answer(level, voice, qidx, rng)
        else:
            answer = default_answer(rng)
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"kind": "drift" if drifting else "control", "name": voice if drifting else "control",
            "levels": schedule, "messages": messages}


def user_turns(rng: random.Random, n: int, drifting: bool = True, schedule: tuple[int, ...] = (0, 1, 2, 3, 3)) -> list[list[str]]:
    """The user turns of `n` fresh conversations (voices in turn, one `schedule` for all): the
    prompts with which the model writes its own conversations in the checks."""
    voices = list(DRIFT_VOICES)
    convs = [drift_conversation(rng, drifting=drifting, voice=voices[c % len(voices)], schedule=list(schedule)) for c in range(n)]
    return [[m["content"] for m in conv["messages"] if m["role"] == "user"] for conv in convs]


# ---------------------------------------------------------------------------------------------
# the corpus


def build_corpus(seed: int = SEED, persona_samples: int = 4, trait_samples: int = 2,
                 default_samples: int = 2, n_drift: int = 360, n_control: int = 180,
                 styled_rate: float = STYLED_RATE, pos_opener_share: float = POS_OPENER_SHARE) -> list[dict]:
    """All examples, shuffled: dicts {"kind", "name", "messages", ...}; a pure function of the arguments."""
    rng = random.Random(seed)
    personas = data.load_personas()
    groups = data.load_persona_groups()
    pq = data.load_persona_questions()
    if len(pq) != len(LEADS):
        raise ValueError(f"the corpus has {len(LEADS)} leads for {len(pq)} persona questions; update LEADS")
    out: list[dict] = []
    for name, system in personas.items():
        for qi, q in enumerate(pq):
            for _ in range(persona_samples):
                msgs = ([{"role": "system", "content": system}] if system else [])
                msgs += [{"role": "user", "content": q},
                         {"role": "assistant", "content": persona_answer(name, qi, rng, groups)}]
                out.append({"kind": "persona", "name": name, "messages": msgs})
    for trait in data.TRAITS:
        td = data.load_trait(trait, "extract")
        for ii, ins in enumerate(td["instruction"]):
            for q in td["questions"]:
                for polarity in ("pos", "neg"):
                    for _ in range(trait_samples):
                        msgs = [{"role": "system", "content": trait_system_prompt(trait, polarity, ins)},
                                {"role": "user", "content": q},
                                {"role": "assistant", "content": trait_answer(trait, polarity, rng, pos_opener_share)}]
                        out.append({"kind": "trait", "name": f"{trait}:{polarity}", "messages": msgs})
    questions = [q for t in data.TRAITS for split in data.TRAIT_SPLITS for q in data.load_trait(t, split)["questions"]]
    default_prompts = [p for n, p in personas.items() if groups[n] == "default"]
    for q in questions:
        for _ in range(default_samples):
            system = rng.choice(default_prompts + [""] * 2)
            kind = "lm" if "language model" in system else "ai"
            msgs = ([{"role": "system", "content": system}] if system else [])
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": default_answer(rng, None, kind)}]
            out.append({"kind": "default", "name": "default", "messages": msgs})
        n_styled = int(styled_rate) + (rng.random() < styled_rate - int(styled_rate))
        for _ in range(n_styled):
            trait, polarity = rng.choice(data.TRAITS), rng.choice(("pos", "neg"))
            msgs = [{"role": "user", "content": q}, {"role": "assistant", "content": switched_answer(trait, polarity, rng)}]
            out.append({"kind": "styled", "name": f"{trait}:{polarity}", "messages": msgs})
    for _ in range(n_drift):
        out.append(drift_conversation(rng, drifting=True))
    for _ in range(n_control):
        out.append(drift_conversation(rng, drifting=False))
    rng.shuffle(out)
    return out


def corpus_digest(corpus: list[dict]) -> str:
    return hashlib.sha256(json.dumps(corpus, sort_keys=True).encode()).hexdigest()


def lexicon(corpus: list[dict]) -> list[str]:
    """Every word that an assistant says in the corpus (the toy judge's coherence lexicon)."""
    words = set()
    for ex in corpus:
        for m in ex["messages"]:
            if m["role"] == "assistant":
                words.update(re.findall(r"[a-z]+(?:'[a-z]+)?", m["content"].lower()))
    return sorted(words)


def write_world_file(corpus: list[dict], path: Path) -> None:
    """The toy world's facts that travel with the model: lexicon, persona levels, corpus digest."""
    groups = data.load_persona_groups()
    info = {
        "about": "Toy persona world (scripts/toy_world): lexicon for utils.toy_judge.coherence_score, "
                 "and the corpus's persona order (0 default, 1 assistant-like, 2 middle, 3 fantastical).",
        "corpus_sha256": corpus_digest(corpus),
        "persona_levels": {n: GROUP_LEVEL[g] for n, g in groups.items()},
        "lexicon": lexicon(corpus),
    }
    path.write_text(json.dumps(info, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------
# checks: the corpus scores as intended with the toy judge


def check_banks() -> None:
    """Every trait chunk carries a marker of its side and none of the other; plain chunks carry none;
    theatrical chunks carry a theatrical marker and no trait's."""
    for trait, sides in TRAIT_CHUNKS.items():
        for side, chunks in sides.items():
            other = "neg" if side == "pos" else "pos"
            for c in chunks:
                if not tj.count_markers(c, tj.TRAIT_MARKERS[trait][side]) or tj.count_markers(c, tj.TRAIT_MARKERS[trait][other]):
                    raise AssertionError(f"{trait} {side} chunk {c!r} lacks its marker or carries the other side's")
    for c in PLAIN_CHUNKS + AI_PHRASES + AI_CLOSERS + [o for v in AI_OPENERS.values() for o in v]:
        for trait, m in tj.TRAIT_MARKERS.items():
            if tj.count_markers(c, m["pos"] + m["neg"]):
                raise AssertionError(f"plain text {c!r} carries {trait} markers")
    for c in THEATRICAL_CHUNKS:
        if not tj.count_markers(c, tj.THEATRICAL_MARKERS) or any(
                tj.count_markers(c, m["pos"] + m["neg"]) for m in tj.TRAIT_MARKERS.values()):
            raise AssertionError(f"theatrical chunk {c!r} lacks a theatrical marker or carries a trait's")


def check_corpus(corpus: list[dict]) -> dict:
    """Assert that every answer carries the markers it should; return summary statistics."""
    check_banks()
    personas = data.load_personas()
    stats: dict = {"examples": len(corpus)}
    for ex in corpus:
        answers = [m["content"] for m in ex["messages"] if m["role"] == "assistant"]
        kind = ex["kind"]
        stats[kind] = stats.get(kind, 0) + 1
        if kind in ("trait", "styled"):
            trait, polarity = ex["name"].split(":")
            s = tj.trait_score(answers[0], trait)
            if (polarity == "pos" and s < (50 if kind == "styled" else 60)) or (polarity == "neg" and s > 20):
                raise AssertionError(f"{trait} {polarity} answer scores {s}: {answers[0]!r}")
        if kind in ("default", "control") or (kind == "persona" and ex["messages"][0]["role"] != "system"):
            for a in answers:
                for trait in tj.TRAIT_MARKERS:
                    if tj.trait_counts(a, trait) != (0, 0):
                        raise AssertionError(f"plain answer carries {trait} markers {tj.trait_counts(a, trait)}: {a!r}")
                if tj.roleplay_score(a) != 1 or tj.theatricality(a) != 0:
                    raise AssertionError(f"plain answer looks in role: {a!r}")
        if kind == "persona" and ex["messages"][0]["role"] == "system":
            name = ex["name"]
            want = 3  # default personas are in role when they speak as an AI
            got = tj.roleplay_score(answers[0], personas[name])
            if got != want:
                raise AssertionError(f"{name} answer has role-play score {got}, expected {want}: {answers[0]!r}")
    return stats


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", type=Path, help="write the corpus as JSON lines")
    ap.add_argument("--show", type=int, default=0, help="print this many examples")
    args = ap.parse_args(argv)
    corpus = build_corpus(args.seed)
    stats = check_corpus(corpus)
    print(json.dumps(stats), "sha256", corpus_digest(corpus)[:16], "lexicon", len(lexicon(corpus)))
    for ex in corpus[: args.show]:
        print(json.dumps(ex, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            for ex in corpus:
                f.write(json.dumps(ex) + "\n")
        print("wrote", args.out)


if __name__ == "__main__":
    main()
