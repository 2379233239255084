"""Writes train.jsonl and eval.jsonl: 48 GSM8K-format word problems written for this example from six
templates (nothing downloaded). train.jsonl has string prompts; eval.jsonl has chat messages with a
system turn, to show both forms. The answers end with `#### N`, as GSM8K's do."""

import json
import random

rng = random.Random(20261201)
NAMES = ["Ava", "Ben", "Chloe", "Dev", "Emma", "Farid", "Grace", "Hugo", "Iris", "Jonas", "Kai", "Lena", "Mateo",
         "Nora", "Omar", "Priya"]
ITEMS = ["apples", "stickers", "marbles", "pencils", "cookies", "stamps", "books", "shells"]


def packs():
    n, a, b, it = rng.choice(NAMES), rng.randint(12, 60), rng.randint(3, 11), rng.choice(ITEMS)
    return (f"{n} has {a} {it}. {n} buys {b} packs with 4 {it} in each pack. How many {it} does {n} have now?",
            f"The packs hold {b}*4 = <<{b}*4={b * 4}>>{b * 4} {it}.\n"
            f"{n} has {a}+{b * 4} = <<{a}+{b * 4}={a + b * 4}>>{a + b * 4} {it}.\n#### {a + b * 4}")


def change():
    n, price, k = rng.choice(NAMES), rng.randint(2, 9), rng.randint(3, 8)
    cost = k * price
    return (f"{n} buys {k} notebooks at ${price} each and pays with a $100 bill. How much change does {n} get?",
            f"The notebooks cost {k}*{price} = <<{k}*{price}={cost}>>{cost} dollars.\n"
            f"The change is 100-{cost} = <<100-{cost}={100 - cost}>>{100 - cost} dollars.\n#### {100 - cost}")


def distance():
    n, speed, h1, h2 = rng.choice(NAMES), rng.randint(30, 70), rng.randint(2, 5), rng.randint(2, 4)
    h, miles = h1 + h2, (h1 + h2) * speed
    return (f"{n} drives at {speed} miles per hour for {h1} hours, then at the same speed for {h2} more hours. "
            f"How many miles does {n} drive in all?",
            f"{n} drives for {h1}+{h2} = <<{h1}+{h2}={h}>>{h} hours.\n"
            f"That is {h}*{speed} = <<{h}*{speed}={miles}>>{miles} miles.\n#### {miles}")


def share():
    n, m, total = rng.choice(NAMES), rng.choice(NAMES), rng.randint(4, 12) * 6
    return (f"{n} and {m} share {total} cards. {n} gets twice as many cards as {m}. How many cards does {m} get?",
            f"There are 2+1 = <<2+1=3>>3 equal parts.\n{m} gets {total}/3 = <<{total}/3={total // 3}>>{total // 3} "
            f"cards.\n#### {total // 3}")


def fence():
    n, w, d = rng.choice(NAMES), rng.randint(3, 9), rng.randint(2, 6)
    per = 2 * (w + w + d)
    return (f"A garden bed is {w} meters wide and {w + d} meters long. {n} puts a fence all around it. "
            f"How many meters of fence does {n} need?",
            f"The bed is {w}+{d} = <<{w}+{d}={w + d}>>{w + d} meters long.\n"
            f"The fence is 2*({w}+{w + d}) = <<2*({w}+{w + d})={per}>>{per} meters.\n#### {per}")


def discount():
    n, base, pct = rng.choice(NAMES), rng.randint(2, 9) * 20, rng.choice([10, 25, 50])
    off = base * pct // 100
    return (f"A jacket costs ${base}. {n} gets {pct}% off. How many dollars does {n} pay?",
            f"The discount is {base}*{pct}/100 = <<{base}*{pct}/100={off}>>{off} dollars.\n"
            f"{n} pays {base}-{off} = <<{base}-{off}={base - off}>>{base - off} dollars.\n#### {base - off}")


if __name__ == "__main__":
    kinds = [packs, change, distance, share, fence, discount]
    rows = [kinds[i % len(kinds)]() for i in range(48)]
    with open("train.jsonl", "w", encoding="utf-8") as f:
        for q, a in rows[:32]:
            f.write(json.dumps({"question": q, "answer": a}) + "\n")
    system = "Solve the problem. End with #### and the number."
    with open("eval.jsonl", "w", encoding="utf-8") as f:
        for q, a in rows[32:]:
            messages = [{"role": "system", "content": system}, {"role": "user", "content": q}]
            f.write(json.dumps({"question": messages, "answer": a}) + "\n")
