"""An offline generator of bAbI-style stories for the 20 bAbI task types, so catbAbI runs with no files.

Each task type has its own small world simulator that writes statements and asks questions whose answers follow
from the statements so far. The stories imitate the *kind* of reasoning each bAbI task tests (Weston et al. 2015),
not its exact text: the vocabulary is smaller, story lengths and question counts are fixed by simple rules, and the
answer distributions are whatever the simulators produce (see docs/results/supervised.md for the differences).

A story is ``Story(task, lines)``; a line is ``(words, answer)``: a statement when ``answer is None`` (it ends with
"."), a question otherwise (it ends with "?"). Words are lower case and separated by single spaces.
"""
from __future__ import annotations

import random
from typing import Callable, NamedTuple, Optional

NUM_TASKS = 20

PEOPLE = ("mary", "john", "sandra", "daniel")
PRONOUN = {"mary": "she", "sandra": "she", "john": "he", "daniel": "he"}
LOCATIONS = ("bathroom", "hallway", "garden", "office", "bedroom", "kitchen")
OBJECTS = ("football", "apple", "milk")
MOVE_VERBS = ("moved", "went", "journeyed", "travelled")
GET_VERBS = ("got", "grabbed", "picked up", "took")
DROP_VERBS = ("dropped", "discarded", "put down", "left")
NUMBERS = ("none", "one", "two", "three")


class Line(NamedTuple):
    words: str
    answer: Optional[str] = None


class Story(NamedTuple):
    task: int  # 1..20
    lines: tuple[Line, ...]


def _move(rng: random.Random, where: dict[str, str], person: str) -> str:
    """Move ``person`` to a new location; return the statement."""
    loc = rng.choice([loc for loc in LOCATIONS if loc != where.get(person)])
    where[person] = loc
    return f"{person} {rng.choice(MOVE_VERBS)} to the {loc}"


class _Carrying:
    """People moving between rooms, picking up and dropping objects (tasks 2, 3, 7, 8)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.where: dict[str, str] = {}
        self.holder: dict[str, str] = {}  # object -> person holding it
        self.floor: dict[str, str] = {}  # object -> room it lies in
        self.history: dict[str, list[str]] = {obj: [] for obj in OBJECTS}  # rooms each object has been in

    def carried(self, person: str) -> list[str]:
        return [obj for obj, who in self.holder.items() if who == person]

    def location(self, obj: str) -> Optional[str]:
        if obj in self.holder:
            return self.where.get(self.holder[obj])
        return self.floor.get(obj)

    def _visit(self, obj: str) -> None:
        loc = self.location(obj)
        if loc is not None and (not self.history[obj] or self.history[obj][-1] != loc):
            self.history[obj].append(loc)

    def act(self) -> str:
        """One random action by a person; returns its statement."""
        rng = self.rng
        person = rng.choice(PEOPLE)
        free = [obj for obj in OBJECTS if obj not in self.holder]
        held = self.carried(person)
        options = ["move"] + (["get"] if free and person in self.where else []) + (["drop"] if held else [])
        action = rng.choice(options)
        if action == "move":
            text = _move(rng, self.where, person)
            for obj in held:
                self._visit(obj)
            return text
        if action == "get":
            obj = rng.choice(free)
            self.holder[obj] = person
            self.floor.pop(obj, None)
            self._visit(obj)
            return f"{person} {rng.choice(GET_VERBS)} the {obj}"
        obj = rng.choice(held)
        del self.holder[obj]
        self.floor[obj] = self.where[person]
        return f"{person} {rng.choice(DROP_VERBS)} the {obj}"


def _rounds(
    rng: random.Random, act: Callable[[], str], ask: Callable[[], Optional[Line]], questions: int
) -> list[Line]:
    """Statements from ``act`` until ``ask`` has a question, ``questions`` times (at most 2-4 statements between)."""
    lines: list[Line] = []
    while questions > 0:
        for _ in range(rng.randint(2, 4)):
            lines.append(Line(act()))
        question = ask()
        if question is not None:
            lines.append(question)
            questions -= 1
    return lines


def _task1(rng: random.Random) -> list[Line]:
    where: dict[str, str] = {}
    return _rounds(
        rng,
        lambda: _move(rng, where, rng.choice(PEOPLE)),
        lambda: Line(f"where is {(p := rng.choice(sorted(where)))}", where[p]),
        5,
    )


def _task2(rng: random.Random) -> list[Line]:
    world = _Carrying(rng)

    def ask() -> Optional[Line]:
        known = [obj for obj in OBJECTS if world.location(obj) is not None]
        return Line(f"where is the {(o := rng.choice(known))}", world.location(o)) if known else None

    return _rounds(rng, world.act, ask, 5)


def _task3(rng: random.Random) -> list[Line]:
    world = _Carrying(rng)

    def ask() -> Optional[Line]:
        pairs = [
            (obj, i)
            for obj, rooms in world.history.items()
            for i in range(1, len(rooms))
            if rooms.count(rooms[i]) == 1
        ]
        if not pairs:
            return None
        obj, i = rng.choice(pairs)
        return Line(f"where was the {obj} before the {world.history[obj][i]}", world.history[obj][i - 1])

    return _rounds(rng, world.act, ask, 4)


DIRECTIONS = {"north": (0, 1), "south": (0, -1), "east": (1, 0), "west": (-1, 0)}
OPPOSITE = {"north": "south", "south": "north", "east": "west", "west": "east"}


def _task4(rng: random.Random) -> list[Line]:
    a, b, c = rng.sample(LOCATIONS, 3)
    d1, d2 = rng.choice(list(DIRECTIONS)), rng.choice(list(DIRECTIONS))
    lines = [Line(f"the {a} is {d1} of the {b}"), Line(f"the {c} is {d2} of the {a}")]
    rng.shuffle(lines)
    fact = rng.choice([(a, d1, b), (c, d2, a)])
    if rng.random() < 0.5:
        lines.append(Line(f"what is {fact[1]} of the {fact[2]}", fact[0]))
    else:
        lines.append(Line(f"what is the {fact[0]} {fact[1]} of", fact[2]))
    return lines


GIVERS = ("fred", "bill", "mary", "jeff")


def _task5(rng: random.Random) -> list[Line]:
    holder: dict[str, str] = {}
    last_give: dict[str, tuple[str, str]] = {}  # object -> (giver, receiver)

    def act() -> str:
        obj = rng.choice(OBJECTS)
        if obj not in holder or rng.random() < 0.2:
            person = rng.choice(GIVERS)
            holder[obj] = person
            return f"{person} {rng.choice(GET_VERBS)} the {obj}"
        giver = holder[obj]
        receiver = rng.choice([p for p in GIVERS if p != giver])
        holder[obj] = receiver
        last_give[obj] = (giver, receiver)
        return f"{giver} {rng.choice(('gave', 'handed', 'passed'))} the {obj} to {receiver}"

    def ask() -> Optional[Line]:
        if not last_give:
            return None
        obj = rng.choice(sorted(last_give))
        giver, receiver = last_give[obj]
        return rng.choice(
            [
                Line(f"who gave the {obj}", giver),
                Line(f"who received the {obj}", receiver),
                Line(f"what did {giver} give to {receiver}", obj),
                Line(f"who did {giver} give the {obj} to", receiver),
            ]
        )

    return _rounds(rng, act, ask, 5)


def _task6(rng: random.Random) -> list[Line]:
    where: dict[str, str] = {}

    def ask() -> Line:
        person = rng.choice(sorted(where))
        loc = where[person] if rng.random() < 0.5 else rng.choice([x for x in LOCATIONS if x != where[person]])
        return Line(f"is {person} in the {loc}", "yes" if loc == where[person] else "no")

    return _rounds(rng, lambda: _move(rng, where, rng.choice(PEOPLE)), ask, 5)


def _someone_carrying(rng: random.Random, world: _Carrying) -> str:
    """A person to ask about: one who carries something two times in three, when there is one."""
    carriers = sorted(set(world.holder.values()))
    return rng.choice(carriers) if carriers and rng.random() < 2 / 3 else rng.choice(PEOPLE)


def _task7(rng: random.Random) -> list[Line]:
    world = _Carrying(rng)

    def ask() -> Line:
        person = _someone_carrying(rng, world)
        return Line(f"how many objects is {person} carrying", NUMBERS[len(world.carried(person))])

    return _rounds(rng, world.act, ask, 5)


def _task8(rng: random.Random) -> list[Line]:
    world = _Carrying(rng)

    def ask() -> Line:
        person = _someone_carrying(rng, world)
        return Line(f"what is {person} carrying", ",".join(world.carried(person)) or "nothing")

    return _rounds(rng, world.act, ask, 5)


def _task9(rng: random.Random) -> list[Line]:
    known: dict[str, tuple[bool, str]] = {}  # person -> (is there, room)

    def act() -> str:
        person, loc = rng.choice(PEOPLE), rng.choice(LOCATIONS)
        there = rng.random() < 0.6
        known[person] = (there, loc)
        if there:
            return f"{person} {rng.choice(MOVE_VERBS)} to the {loc}"
        return f"{person} is {rng.choice(('not', 'no longer'))} in the {loc}"

    def ask() -> Line:
        person = rng.choice(sorted(known))
        there, loc = known[person]
        if there and rng.random() < 0.5:
            loc = rng.choice([x for x in LOCATIONS if x != loc])
            return Line(f"is {person} in the {loc}", "no")
        return Line(f"is {person} in the {loc}", "yes" if there else "no")

    return _rounds(rng, act, ask, 5)


def _task10(rng: random.Random) -> list[Line]:
    known: dict[str, tuple[str, ...]] = {}  # person -> rooms they may be in

    def act() -> str:
        person = rng.choice(PEOPLE)
        if rng.random() < 0.5:
            rooms = tuple(rng.sample(LOCATIONS, 2))
            known[person] = rooms
            return f"{person} is either in the {rooms[0]} or the {rooms[1]}"
        known[person] = (rng.choice(LOCATIONS),)
        return f"{person} {rng.choice(MOVE_VERBS)} to the {known[person][0]}"

    def ask() -> Line:
        person = rng.choice(sorted(known))
        rooms = known[person]
        loc = rng.choice(rooms) if rng.random() < 0.6 else rng.choice([x for x in LOCATIONS if x not in rooms])
        answer = "no" if loc not in rooms else ("yes" if len(rooms) == 1 else "maybe")
        return Line(f"is {person} in the {loc}", answer)

    return _rounds(rng, act, ask, 5)


THEN = ("then", "afterwards", "following that", "after that")


def _task11(rng: random.Random) -> list[Line]:
    where: dict[str, str] = {}
    lines: list[Line] = []
    for _ in range(5):
        person = rng.choice(PEOPLE)
        lines.append(Line(_move(rng, where, person)))
        second = _move(rng, where, person).split(" ", 1)[1]
        lines.append(Line(f"{rng.choice(THEN)} {PRONOUN[person]} {second}"))
        lines.append(Line(f"where is {person}", where[person]))
    return lines


def _pair_move(rng: random.Random, where: dict[str, str], pair: list[str]) -> str:
    loc = rng.choice(LOCATIONS)
    for person in pair:
        where[person] = loc
    return f"{pair[0]} and {pair[1]} {rng.choice(MOVE_VERBS)} to the {loc}"


def _task12(rng: random.Random) -> list[Line]:
    where: dict[str, str] = {}
    return _rounds(
        rng,
        lambda: _pair_move(rng, where, rng.sample(PEOPLE, 2)),
        lambda: Line(f"where is {(p := rng.choice(sorted(where)))}", where[p]),
        5,
    )


def _task13(rng: random.Random) -> list[Line]:
    where: dict[str, str] = {}
    lines: list[Line] = []
    for _ in range(5):
        pair = rng.sample(PEOPLE, 2)
        lines.append(Line(_pair_move(rng, where, pair)))
        loc = rng.choice([x for x in LOCATIONS if x != where[pair[0]]])
        where[pair[0]] = where[pair[1]] = loc
        lines.append(Line(f"{rng.choice(THEN)} they {rng.choice(MOVE_VERBS)} to the {loc}"))
        person = rng.choice(sorted(where))
        lines.append(Line(f"where is {person}", where[person]))
    return lines


TIMES = ("yesterday", "this morning", "this afternoon", "this evening")
PLACES = ("park", "school", "cinema", "office", "kitchen", "bedroom")


def _task14(rng: random.Random) -> list[Line]:
    facts: list[tuple[str, Line]] = []
    questions: dict[str, Line] = {}
    for person in rng.sample(("julie", "fred", "mary", "bill"), 2):
        places = rng.sample(PLACES, len(TIMES))
        facts += [(person, Line(f"{time} {person} went to the {place}")) for time, place in zip(TIMES, places)]
        i = rng.randrange(1, len(TIMES))
        questions[person] = Line(f"where was {person} before the {places[i]}", places[i - 1])
    rng.shuffle(facts)
    lines: list[Line] = []
    told = {person: 0 for person in questions}
    for person, fact in facts:  # each question comes right after the last fact about its person
        lines.append(fact)
        told[person] += 1
        if told[person] == len(TIMES):
            lines.append(questions[person])
    return lines


SPECIES = {"mouse": "mice", "sheep": "sheep", "wolf": "wolves", "cat": "cats"}
ANIMAL_NAMES = ("gertrude", "winona", "jessica", "emily")


def _task15(rng: random.Random) -> list[Line]:
    species = list(SPECIES)
    fears = {s: rng.choice([t for t in species if t != s]) for s in species}
    kind = {name: rng.choice(species) for name in ANIMAL_NAMES}
    lines = [Line(f"{SPECIES[s]} are afraid of {SPECIES[fears[s]]}") for s in species]
    lines += [Line(f"{name} is a {kind[name]}") for name in ANIMAL_NAMES]
    rng.shuffle(lines)
    for name in rng.sample(ANIMAL_NAMES, 3):
        lines.append(Line(f"what is {name} afraid of", fears[kind[name]]))
    return lines


def _task16(rng: random.Random) -> list[Line]:
    animals = ("swan", "lion", "frog", "rhino")
    colours = rng.sample(("white", "yellow", "green", "gray"), len(animals))
    colour_of = dict(zip(animals, colours))
    names = rng.sample(("lily", "bernhard", "greg", "julius", "brian"), 5)
    seen = [rng.choice(animals) for _ in names[:4]]
    lines: list[Line] = []
    for name, animal in zip(names[:4], seen):
        lines += [Line(f"{name} is a {animal}"), Line(f"{name} is {colour_of[animal]}")]
    last = rng.choice(seen)
    lines += [Line(f"{names[4]} is a {last}"), Line(f"what color is {names[4]}", colour_of[last])]
    return lines


SHAPES = ("red square", "blue square", "red sphere", "triangle", "pink rectangle", "yellow square")
RELATIONS = {"to the left of": (-1, 0), "to the right of": (1, 0), "above": (0, 1), "below": (0, -1)}


def _holds(relation: str, a: tuple[int, int], b: tuple[int, int]) -> bool:
    dx, dy = RELATIONS[relation]
    return (a[0] - b[0]) * dx > 0 if dx else (a[1] - b[1]) * dy > 0


def _task17(rng: random.Random) -> list[Line]:
    a, b, c = rng.sample(SHAPES, 3)
    rel_a, rel_c = rng.sample(list(RELATIONS), 2)
    pos = {b: (0, 0), a: RELATIONS[rel_a], c: RELATIONS[rel_c]}
    lines = [Line(f"the {a} is {rel_a} the {b}"), Line(f"the {c} is {rel_c} the {b}")]
    for _ in range(4):
        x, y = rng.sample([a, b, c], 2)
        rel = rng.choice(list(RELATIONS))
        lines.append(Line(f"is the {x} {rel} the {y}", "yes" if _holds(rel, pos[x], pos[y]) else "no"))
    return lines


CONTAINERS = ("box", "chest", "suitcase", "container", "chocolate", "football")


def _task18(rng: random.Random) -> list[Line]:
    order = rng.sample(CONTAINERS, 5)  # smallest first
    lines: list[Line] = []
    for small, big in zip(order, order[1:]):
        if rng.random() < 0.5:
            lines.append(Line(f"the {small} fits inside the {big}"))
        else:
            lines.append(Line(f"the {big} is bigger than the {small}"))
    rng.shuffle(lines)
    for _ in range(4):
        i, j = rng.sample(range(len(order)), 2)
        if rng.random() < 0.5:
            lines.append(Line(f"does the {order[i]} fit in the {order[j]}", "yes" if i < j else "no"))
        else:
            lines.append(Line(f"is the {order[i]} bigger than the {order[j]}", "yes" if i > j else "no"))
    return lines


def _task19(rng: random.Random) -> list[Line]:
    rooms = rng.sample(LOCATIONS, 5)
    cell = {rooms[0]: (0, 0)}
    step: dict[tuple[str, str], str] = {}  # (from, to) -> direction, for the stated adjacencies only
    facts: list[Line] = []
    for room in rooms[1:]:
        while True:
            anchor, direction = rng.choice(list(cell)), rng.choice(list(DIRECTIONS))
            dx, dy = DIRECTIONS[direction]
            spot = (cell[anchor][0] + dx, cell[anchor][1] + dy)
            if spot not in cell.values():
                break
        cell[room] = spot
        step[anchor, room], step[room, anchor] = direction, OPPOSITE[direction]
        facts.append(Line(f"the {room} is {direction} of the {anchor}"))
    rng.shuffle(facts)
    routes = [(a, c, f"{step[a, b][0]},{step[b, c][0]}") for (a, b) in step for (b2, c) in step if b2 == b and c != a]
    start, goal, route = rng.choice(routes)
    return facts + [Line(f"how do you go from the {start} to the {goal}", route)]


MOTIVES = {
    "hungry": ("kitchen", "apple"),
    "thirsty": ("kitchen", "milk"),
    "tired": ("bedroom", "pajamas"),
    "bored": ("garden", "football"),
}


def _task20(rng: random.Random) -> list[Line]:
    lines: list[Line] = []
    for person in rng.sample(("yann", "jason", "antoine", "sumit", "anna", "lucy"), 3):
        motive = rng.choice(list(MOTIVES))
        room, obj = MOTIVES[motive]
        lines += [
            Line(f"{person} is {motive}"),
            Line(f"where will {person} go", room),
            Line(f"{person} went to the {room}"),
            Line(f"why did {person} go to the {room}", motive),
            Line(f"{person} grabbed the {obj} there"),
            Line(f"why did {person} get the {obj}", motive),
        ]
    return lines


TASKS: dict[int, Callable[[random.Random], list[Line]]] = {
    1: _task1, 2: _task2, 3: _task3, 4: _task4, 5: _task5, 6: _task6, 7: _task7, 8: _task8, 9: _task9,
    10: _task10, 11: _task11, 12: _task12, 13: _task13, 14: _task14, 15: _task15, 16: _task16, 17: _task17,
    18: _task18, 19: _task19, 20: _task20,
}


def generate_splits(seed: int, sizes: dict[str, int], tasks: tuple[int, ...] = tuple(TASKS)) -> dict[str, list[Story]]:
    """Stories for each split, ``sizes[split]`` per task, no story text in two splits (or twice in one).

    Deterministic under ``seed``. ``ValueError`` if a task cannot produce that many distinct stories.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown bAbI task(s) {unknown}; expected numbers 1..{NUM_TASKS}")
    for split, n in sizes.items():
        if n < 0:
            raise ValueError(f"number of {split} stories per task must be >= 0, got {n}")
    splits: dict[str, list[Story]] = {split: [] for split in sizes}
    for task in tasks:
        rng = random.Random(seed * 1009 + task)
        seen: set[tuple[Line, ...]] = set()
        for split, n in sizes.items():
            made, misses = 0, 0
            while made < n:
                lines = tuple(TASKS[task](rng))
                if lines in seen:
                    misses += 1
                    if misses > 100 * n + 1000:
                        raise ValueError(f"bAbI task {task}: cannot generate {n} distinct {split} stories")
                    continue
                seen.add(lines)
                splits[split].append(Story(task, lines))
                made += 1
    return splits
