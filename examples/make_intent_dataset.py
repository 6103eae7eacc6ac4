"""Write the customer-support intent dataset: examples/data/intent_{train,val,test}.jsonl.

Every message is written here, from templates and slot fillers, with a fixed
seed: running the script again re-creates the three files byte for byte.

A message is ``[opener] [context] ask [closer]``. The *ask* alone decides the
label; the *context* is a sentence about the customer's situation, and in 38 %
of the messages it is about another intent's topic ("The app keeps
crashing. Please cancel my membership." is cancel_subscription). Keyword
matching therefore fails on those, while each still has one defensible label
under the rules in :data:`LABEL_RULES`.

    .venv/bin/python examples/make_intent_dataset.py
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

DATA = Path(__file__).parent / "data"
SEED = 20240601
#: Messages per label in each split; 6 labels give 204 / 96 / 204 examples.
SPLIT_SIZES = {"train": 34, "val": 16, "test": 34}

#: The labelling rules the templates follow (and a natural "better instruction").
LABEL_RULES = {
    "billing": "questions or changes about charges, invoices, prices or payment methods, "
    "without asking for money back",
    "refund": "the customer wants money returned for a purchase or a charge",
    "shipping": "delivery of a physical order: where it is, tracking, address, delays",
    "account_access": "cannot sign in, or wants to change a password, login e-mail or 2FA",
    "technical_issue": "the app, website or a feature malfunctions: crashes, errors, bugs",
    "cancel_subscription": "wants to end a subscription, membership or automatic renewal",
}

SLOTS: dict[str, list[str]] = {
    "product": ["headphones", "blender", "running shoes", "desk lamp", "phone case", "backpack",
                "coffee grinder", "winter jacket", "yoga mat", "keyboard"],
    "plan": ["Premium plan", "Pro subscription", "family plan", "monthly membership",
             "annual plan", "Plus account"],
    "device": ["iPhone", "Android phone", "laptop", "iPad", "Windows PC", "Chromebook", "Mac"],
    "when": ["yesterday", "last Tuesday", "two weeks ago", "on March 3", "this morning",
             "last month", "on the 14th", "over the weekend"],
    "feature": ["export button", "search bar", "sync", "notifications", "checkout page",
                "photo upload", "calendar view", "dark mode"],
    "symptom": ["an error 500", "a blank white screen", "'something went wrong'",
                "a spinner that never stops", "error code E42"],
    "carrier": ["UPS", "FedEx", "DHL", "the postal service"],
}  # fmt: skip

#: What the customer asks for; this alone decides the label.
ASKS: dict[str, list[str]] = {
    "billing": [
        "Why was I charged {amount} {when}?",
        "Can you explain the {amount} charge on my statement?",
        "I need an invoice for my {plan} for my company's accounting.",
        "How do I update the credit card you bill me with?",
        "Can I pay with PayPal instead of my card?",
        "Why did the price of my {plan} go up?",
        "Where can I download my receipts from this year?",
        "Please change the billing address on my invoices.",
        "Is VAT included in the {amount} you charged me?",
        "My card expired, how do I add a new payment method?",
        "What will I be charged when my {plan} renews?",
        "can you move my billing date to the 1st of the month",
        "Do you offer a discount if I pay yearly?",
    ],
    "refund": [
        "I want a refund for the {product}.",
        "Please give me my {amount} back.",
        "Can I get my money back for order {order}?",
        "I'd like to be reimbursed for the {amount} charge.",
        "How long until the refund for my {product} reaches my card?",
        "Refund the duplicate payment of {amount}, please.",
        "I returned the {product} {when}, when do I get my money?",
        "please refund order {order}, it was not what I ordered",
        "I want the {amount} returned to my account.",
        "Could you credit back the {amount} you took by mistake?",
        "I'm asking for a full refund of order {order}.",
        "Send the money for the {product} back to my PayPal.",
    ],
    "shipping": [
        "Where is my order {order}?",
        "When will my {product} be delivered?",
        "The tracking for order {order} hasn't updated for days.",
        "Can I change the delivery address for order {order}?",
        "Do you ship to Canada?",
        "{carrier} says delivered but there is no {product} at my door.",
        "How much is express delivery for a {product}?",
        "my package is late, it was due {when}",
        "Can I get a tracking number for order {order}?",
        "Can the {product} be left with my neighbour if I'm out?",
        "Which courier will bring order {order}?",
        "Is it possible to pick up my {product} at a store instead?",
    ],
    "account_access": [
        "I can't log in to my account.",
        "I forgot my password and the reset e-mail never arrives.",
        "My account is locked after too many attempts.",
        "How do I change the e-mail address I sign in with?",
        "I lost my phone and can't get the two-factor code.",
        "It says my password is wrong but I'm sure it's right.",
        "Please unlock my account so I can sign in again.",
        "i need to reset my password",
        "Someone changed my password and I can't get in.",
        "How do I turn on two-factor authentication?",
        "The verification code you text me never comes, so I can't sign in.",
        "Can I change my username?",
    ],
    "technical_issue": [
        "The app crashes every time I open it on my {device}.",
        "The {feature} shows {symptom}.",
        "The {feature} stopped working after the last update.",
        "The website is extremely slow on my {device}.",
        "I get {symptom} when I try to save my work.",
        "the {feature} does nothing when I tap it",
        "Your app freezes on my {device} and I have to restart it.",
        "Pages load with {symptom}, it started {when}.",
        "The {feature} works on my {device} but not in the browser.",
        "Videos won't play, I just see {symptom}.",
        "My changes don't sync between my {device} and the website.",
        "The {feature} is broken, is there a bug?",
    ],
    "cancel_subscription": [
        "Please cancel my {plan}.",
        "I want to cancel my subscription.",
        "How do I stop my {plan} from renewing?",
        "Turn off auto-renewal on my account.",
        "I'd like to end my membership at the end of this month.",
        "Close my {plan}, I don't need it anymore.",
        "cancel my plan please",
        "Stop my subscription before the next billing cycle.",
        "How can I unsubscribe from the {plan}?",
        "I don't want to continue with the {plan} after the trial.",
        "Please don't renew my {plan} next year.",
        "Where is the button to cancel my membership?",
    ],
}

#: A situation about each topic; put before another label's ask it is a distractor.
CONTEXTS: dict[str, list[str]] = {
    "billing": [
        "I see a charge of {amount} on my card.",
        "My invoice looks different this month.",
        "I pay for the {plan} with my credit card.",
    ],
    "refund": [
        "I don't want a refund.",
        "I already got a refund for an earlier order.",
        "I'm not asking for my money back.",
    ],
    "shipping": [
        "My {product} finally arrived {when}.",
        "The {product} from order {order} came {when}.",
        "The package with my {product} was delivered two days late.",
    ],
    "account_access": [
        "I can log in without problems.",
        "I just reset my password {when}.",
        "I'm signed in on my {device}.",
    ],
    "technical_issue": [
        "The app keeps crashing on my {device}.",
        "Your website showed {symptom} {when}.",
        "I had a bug with the {feature} {when}.",
    ],
    "cancel_subscription": [
        "I'm thinking about cancelling my {plan}.",
        "I'm not cancelling my {plan}.",
        "I want to keep my {plan}.",
    ],
    "neutral": [
        "I've been a customer for {years} years.",
        "I'm writing from my {device}.",
        "I placed order {order} {when}.",
        "I'm using the {plan}.",
    ],
}

#: (ask label, context topic) never paired, as both labels would be defensible:
#: "The app keeps crashing. I can't log in." could be either.
INCOMPATIBLE = {("account_access", "technical_issue")}

OPENERS = ["", "", "", "Hi!", "Hello.", "Hey there.", "Good morning.", "Quick question:"]
CLOSERS = ["", "", "", "Thanks.", "Thank you!", "Please help.", "This is urgent.", "Cheers"]


def fill(template: str, rng: random.Random) -> str:
    """Replace each ``{slot}`` with a random filler (numbers are drawn fresh)."""

    def one(match: re.Match[str]) -> str:
        slot = match.group(1)
        if slot == "order":
            return f"#{rng.randint(10000, 99999)}"
        if slot == "amount":
            return rng.choice(["$", "€", "£"]) + rng.choice(["9.99", "12.50", "49", "79.00", "120"])
        if slot == "years":
            return str(rng.randint(2, 9))
        return rng.choice(SLOTS[slot])

    return re.sub(r"\{(\w+)\}", one, template)


def context_topic(label: str, rng: random.Random) -> str | None:
    """The topic of the context sentence: none (30 %), neutral (32 %) or another label's."""
    roll = rng.random()
    if roll < 0.3:
        return None
    if roll < 0.62:
        return "neutral"
    others = [t for t in ASKS if t != label and (label, t) not in INCOMPATIBLE]
    # A context of the ask's own topic would only repeat the ask, so distractors come from
    # the other labels, each equally likely.
    return rng.choice(others)


def message(label: str, rng: random.Random) -> str:
    """One customer message whose intent is ``label``.

    Args:
        label: The intent; only the ask is drawn from its templates.
        rng: The generator's random source (the only one, for reproducibility).

    Returns:
        The message text.
    """
    parts = [rng.choice(OPENERS)]
    topic = context_topic(label, rng)
    if topic is not None:
        parts.append(fill(rng.choice(CONTEXTS[topic]), rng))
    if topic in ("refund", "account_access", "cancel_subscription") and rng.random() < 0.5:
        parts.append("But")  # "I'm not asking for my money back. But where is my order?"
        template = rng.choice(ASKS[label])
        if template[:2] not in ("I ", "I'") and template[0] != "{":  # keep "I" and names
            template = template[0].lower() + template[1:]
        ask = fill(template, rng)
    else:
        ask = fill(rng.choice(ASKS[label]), rng)
    closer = rng.choice(CLOSERS)
    if closer and not ask.endswith((".", "?", "!")):
        ask += "."  # a chat-style ask ("cancel my plan please") still ends its sentence
    text = " ".join(p for p in [*parts, ask, closer] if p)
    if rng.random() < 0.12:  # chat-style: all lower case, no final full stop
        text = text.lower().rstrip(".")
    return text


def generate(seed: int = SEED) -> dict[str, list[dict[str, str]]]:
    """Build the three splits: balanced labels, unique messages, shuffled order.

    Args:
        seed: Seeds the one random source; the default writes the committed files.

    Returns:
        Split name ("train", "val", "test") -> rows ``{"message", "intent"}``.
    """
    rng = random.Random(seed)
    per_label = sum(SPLIT_SIZES.values())
    seen: set[str] = set()
    splits: dict[str, list[dict[str, str]]] = {name: [] for name in SPLIT_SIZES}
    for label in ASKS:
        messages: list[str] = []
        while len(messages) < per_label:
            text = message(label, rng)
            # Case-insensitive so a lower-cased variant never leaks across splits.
            if text.lower() not in seen:
                seen.add(text.lower())
                messages.append(text)
        start = 0
        for name, size in SPLIT_SIZES.items():
            splits[name] += [
                {"message": m, "intent": label} for m in messages[start : start + size]
            ]
            start += size
    for rows in splits.values():
        rng.shuffle(rows)
    return splits


def main() -> None:
    """Write the splits as JSON lines and print counts."""
    for name, rows in generate().items():
        path = DATA / f"intent_{name}.jsonl"
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        path.write_text(text, encoding="utf-8")
        print(f"{path.name}: {len(rows)} examples")


if __name__ == "__main__":
    main()
