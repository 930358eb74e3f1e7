"""The small caption grammar of the demo corpus: events, their canonical captions, and paraphrases.

An event is four slot indices (subject, attribute, action, place). Each slot value is a list of synonymous
phrases whose first entry is canonical. The *canonical caption* -- every slot's first phrase in the order
"subject attribute action place" -- is the sentence whose embedding makes the event's frame features and
the train caption. A *paraphrase* draws other synonyms and another word order, so the query shares meaning,
not the exact words, with the sentence the video was made from.

12 subjects x 5 attributes x 36 actions x 15 places = 32,400 distinct events.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = [
    "ACTIONS",
    "ATTRIBUTES",
    "BACKGROUNDS",
    "PLACES",
    "SUBJECTS",
    "Event",
    "canonical_caption",
    "paraphrase",
]

SUBJECTS = [
    ["a man", "a guy", "a gentleman"],
    ["a woman", "a lady"],
    ["a boy", "a young boy", "a little boy"],
    ["a girl", "a young girl", "a little girl"],
    ["an old man", "an elderly man"],
    ["an old woman", "an elderly woman"],
    ["a chef", "a cook"],
    ["a police officer", "a cop"],
    ["a doctor", "a physician"],
    ["a teenager", "a teen"],
    ["a student", "a pupil"],
    ["a nurse", "a medical nurse"],
]
ATTRIBUTES = [
    [""],
    ["in a red shirt", "wearing a red shirt"],
    ["in a blue jacket", "wearing a blue jacket"],
    ["with glasses", "wearing glasses"],
    ["in a black hat", "wearing a black hat"],
]
ACTIONS = [
    ["opens the door", "pulls the door open", "swings the door open"],
    ["closes the window", "shuts the window"],
    ["picks up a book", "grabs a book", "lifts a book"],
    ["reads a newspaper", "looks through a newspaper"],
    ["drinks a cup of coffee", "sips some coffee"],
    ["eats a sandwich", "bites into a sandwich"],
    ["cuts vegetables", "chops vegetables", "slices vegetables"],
    ["washes the dishes", "cleans the dishes", "scrubs the dishes"],
    ["plays the guitar", "strums a guitar"],
    ["plays the piano", "plays a piano"],
    ["rides a bicycle", "cycles on a bike"],
    ["throws a ball", "tosses a ball"],
    ["kicks a football", "kicks a soccer ball"],
    ["runs quickly", "sprints"],
    ["walks slowly", "strolls"],
    ["dances", "starts dancing"],
    ["sings a song", "sings"],
    ["talks on the phone", "makes a phone call", "chats on a phone"],
    ["types on a laptop", "works on a laptop"],
    ["writes a letter", "writes a note"],
    ["paints a picture", "paints on a canvas"],
    ["takes a photo", "snaps a picture"],
    ["sits down on a chair", "takes a seat on a chair"],
    ["stands up", "gets up"],
    ["lies down on a bed", "lies on a bed"],
    ["hugs a friend", "embraces a friend"],
    ["waves hello", "waves a hand"],
    ["laughs loudly", "bursts out laughing"],
    ["cries", "starts crying", "sheds tears"],
    ["jumps over a fence", "leaps over a fence"],
    ["climbs the stairs", "walks up the stairs"],
    ["pours a glass of water", "fills a glass with water"],
    ["ties a shoelace", "ties a shoe"],
    ["folds the laundry", "folds clothes"],
    ["feeds a dog", "gives a dog some food"],
    ["brushes their teeth", "cleans their teeth"],
]
PLACES = [
    ["in the kitchen", "inside the kitchen"],
    ["in the living room", "in the lounge"],
    ["in the bedroom", "inside the bedroom"],
    ["in the park", "at the park"],
    ["on the street", "out on the street"],
    ["at the beach", "on the beach"],
    ["in an office", "at the office"],
    ["in a classroom", "in a school classroom"],
    ["in a garden", "in the backyard"],
    ["in a restaurant", "at a restaurant"],
    ["in the garage", "inside the garage"],
    ["at a train station", "on a train platform"],
    ["in a hospital", "at the hospital"],
    ["in a forest", "in the woods"],
    ["on a rooftop", "on the roof"],
]
# What the camera shows between events; their embeddings (or plain noise) make the background frames.
BACKGROUNDS = [
    "an empty room with nobody in it",
    "the camera pans across a blank wall",
    "a blurry shot of the sky",
    "a black screen",
    "a title card with white text",
    "people walking far away in the distance",
    "trees moving in the wind",
    "a wide shot of a city skyline",
    "cars passing by on a road",
    "a close up of a wooden table",
    "a dark hallway",
    "clouds drifting across the sky",
    "a static shot of a building",
    "waves rolling on the sea",
    "an empty parking lot",
    "a shaky shot of the floor",
]

# Word orders of a paraphrase; {s} subject (+ attribute), {a} action, {p} place.
_TEMPLATES = [
    "{s} {a} {p}",
    "{p}, {s} {a}",
    "{s} {p} {a}",
    "we see {s} who {a} {p}",
    "{p} we see {s} that {a}",
    "the video shows {s} who {a} {p}",
]


class Event(NamedTuple):
    subject: int
    attribute: int
    action: int
    place: int


def _subject(phrase: str, attribute: str) -> str:
    return f"{phrase} {attribute}" if attribute else phrase


def canonical_caption(event: Event) -> str:
    """Every slot's first phrase, "subject [attribute] action place"."""
    s = _subject(SUBJECTS[event.subject][0], ATTRIBUTES[event.attribute][0])
    return f"{s} {ACTIONS[event.action][0]} {PLACES[event.place][0]}"


def paraphrase(event: Event, rng: np.random.Generator) -> str:
    """A rewording of ``canonical_caption(event)`` (random synonyms and word order), never equal to it."""
    canonical = canonical_caption(event)
    while True:
        s = _subject(_pick(SUBJECTS[event.subject], rng), _pick(ATTRIBUTES[event.attribute], rng))
        template = _TEMPLATES[int(rng.integers(len(_TEMPLATES)))]
        text = template.format(s=s, a=_pick(ACTIONS[event.action], rng), p=_pick(PLACES[event.place], rng))
        if text != canonical:
            return text


def _pick(phrases: list[str], rng: np.random.Generator) -> str:
    return phrases[int(rng.integers(len(phrases)))]
