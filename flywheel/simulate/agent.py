"""The second simulated app: a shop's support-desk agent with five tools (issue 12).

Customers write one message; the app sends it with the support desk's tools
(`flywheel.domains.support.TOOLS`), ``tool_choice: "required"`` and
``parallel_tool_calls: false`` (the agent answers every message with one call). Each
request is generated together with the call it asks for (`AgentRequest.call`, the ground
truth, kept out of the traffic like a chart's configuration): the function and its
arguments, taken from the message's words (an order id as written, an amount as a number,
a reason, topic and priority from the allowed values).

`wrong_call` is the stand-in model's mistake: the wrong function, a wrong argument (an
order id with two digits swapped, another amount or reason), a required argument left
out, or a text answer instead of a call. `judge_call` scores an answer against the truth:
the function right is half the score, the arguments exactly right the other half.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from flywheel.domains.support import ESCALATION_TOPICS, PRIORITIES, SUPPORT_TASK, TOOLS
from flywheel.domains.tool_calls import call_key, make_call, parse_answer, render_answer

__all__ = ["AGENT_APP", "AGENT_SYSTEM", "SUPPORT_TASK", "TOOLS", "AgentRequest", "generate_agent_request",
           "judge_call", "wrong_call"]

#: The app name the agent's traffic carries.
AGENT_APP = "support-agent"
AGENT_SYSTEM = ("You are the support desk of ShopCo. Answer each customer message by calling the one function that "
                "does what they ask, with the arguments their message gives.")

_STREETS = ("12 Rose Street", "4 Mill Lane", "88 Harbour Road", "7 Elm Avenue", "130 King Street", "2 Station Road")
_CITIES = (("Leeds", "LS1 4AB"), ("Bristol", "BS1 5TR"), ("Glasgow", "G2 3QD"), ("Cardiff", "CF10 1EP"),
           ("York", "YO1 7HH"), ("Bath", "BA1 1SU"))
_REFUND_WORDS = {
    "damaged": ("arrived damaged", "came broken", "was smashed in the box"),
    "late": ("arrived two weeks late", "came far too late", "was late for the birthday"),
    "wrong_item": ("is the wrong item", "had the wrong size in it", "was not what I ordered"),
    "not_received": ("never arrived", "was never delivered", "is still not here after a month"),
}
_TOPIC_WORDS = {
    "billing": ("I was charged twice", "my invoice is wrong", "you took money I never agreed to"),
    "delivery": ("the courier keeps missing me", "my deliveries are always lost", "the driver was rude"),
    "account": ("I'm locked out of my account", "someone changed my account email", "my account was closed"),
    "product": ("the blender caught fire", "the charger you sold me is dangerous", "the toy has sharp edges"),
}
_PRIORITY_WORDS = {"low": ("when you have time", "no rush"), "normal": ("please", "thanks"),
                   "high": ("this is urgent", "I need this sorted today")}


@dataclass(frozen=True)
class AgentRequest:
    """A customer's message and the call it asks for (the ground truth)."""

    text: str
    call: dict  # OpenAI's shape, arguments as compact JSON text
    intent: str  # the function's name

    @property
    def answer(self) -> str:
        """The right answer in the Hermes text form."""
        return render_answer("", [self.call])


def _order_id(rng: random.Random) -> str:
    return rng.choice("ABCDEFGHJK") + f"{rng.randrange(10000, 99999)}"


def generate_agent_request(rng: random.Random) -> AgentRequest:
    """A customer message and its call; the five functions equally often."""
    kind = rng.choice(("lookup_order", "issue_refund", "change_address", "cancel_order", "escalate"))
    order = _order_id(rng)
    if kind == "lookup_order":
        text = rng.choice((f"Where is my order {order}?", f"Can you check the status of order {order}?",
                           f"hi, any news on {order}? it's been a week", f"When will order {order} arrive?"))
        args: dict = {"order_id": order}
    elif kind == "issue_refund":
        reason = rng.choice(sorted(_REFUND_WORDS))
        amount = rng.choice((12, 19.99, 25.5, 40, 64.9, 120))
        shown = f"{amount:.2f}" if amount != int(amount) else str(int(amount))
        text = rng.choice((f"Order {order} {rng.choice(_REFUND_WORDS[reason])}, please refund the ${shown}.",
                           f"I want my ${shown} back for {order}, it {rng.choice(_REFUND_WORDS[reason])}."))
        args = {"order_id": order, "amount": amount, "reason": reason}
    elif kind == "change_address":
        street, (city, postcode) = rng.choice(_STREETS), rng.choice(_CITIES)
        text = rng.choice((f"Please send order {order} to {street}, {city}, {postcode} instead.",
                           f"I moved! Deliver {order} to {street}, {city} {postcode} please"))
        args = {"order_id": order, "street": street, "city": city, "postcode": postcode}
    elif kind == "cancel_order":
        text = rng.choice((f"Cancel order {order}, I don't need it anymore.", f"please cancel {order}",
                           f"I changed my mind about {order}, cancel it."))
        args = {"order_id": order}
    else:
        topic, priority = rng.choice(ESCALATION_TOPICS), rng.choice(PRIORITIES)
        text = (f"{rng.choice(_TOPIC_WORDS[topic])} and I want to talk to a person, "
                f"{rng.choice(_PRIORITY_WORDS[priority])}.")
        text = text[0].upper() + text[1:]
        args = {"topic": topic, "priority": priority}
    return AgentRequest(text, make_call(kind, args), kind)


def wrong_call(call: dict, rng: random.Random) -> str:
    """A wrong answer of the stand-in model to a request whose true call is `call`, in the
    Hermes text form."""
    name = call["function"]["name"]
    args = json.loads(call["function"]["arguments"])
    roll = rng.random()
    if roll < 0.3:  # the wrong function, with what arguments it can take
        other = rng.choice([t["function"]["name"] for t in TOOLS if t["function"]["name"] != name])
        params = next(t for t in TOOLS if t["function"]["name"] == other)["function"]["parameters"]["properties"]
        kept = {k: v for k, v in args.items() if k in params}
        return render_answer("", [make_call(other, kept or {"order_id": args.get("order_id", "A00000")})])
    if roll < 0.65 and "order_id" in args:  # two digits of the order id swapped
        order = args["order_id"]
        i = rng.randrange(1, len(order) - 1)
        swapped = order[:i] + order[i + 1] + order[i] + order[i + 2:]
        args["order_id"] = swapped if swapped != order else order[:-1] + str((int(order[-1]) + 1) % 10)
    elif roll < 0.8 and len(args) > 1:  # a required argument left out
        args.pop(rng.choice(sorted(args)))
    elif roll < 0.9:
        return rng.choice(("I'm sorry, I can't help with that.", "Let me check that for you."))
    elif "amount" in args:
        args["amount"] = round(args["amount"] * 2, 2)
    elif "priority" in args:
        args["priority"] = rng.choice([p for p in PRIORITIES if p != args["priority"]])
    else:
        args = {**args, "note": "asap"}  # an argument the function does not take
    return render_answer("", [make_call(name, args)])


def judge_call(truth: dict, answer: str) -> tuple[float, bool]:
    """``(score, correct)`` of an answer against the true call: one call, the right function
    (half) with exactly the right arguments (the other half)."""
    _, calls = parse_answer(answer)
    if not calls:
        return 0.0, False
    name_ok = calls[0]["function"]["name"] == truth["function"]["name"]
    args_ok = name_ok and call_key(calls[0]) == call_key(truth)
    correct = args_ok and len(calls) == 1
    return (1.0 if correct else 0.5 * name_ok + 0.4 * args_ok), correct

