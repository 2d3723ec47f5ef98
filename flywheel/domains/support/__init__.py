"""The support-desk domain: an agent with a small tool set answers a shop's customers by
calling one function (issue 12).

`TOOLS` are the app's functions, OpenAI ``tools`` with JSON Schemas: ``lookup_order``,
``issue_refund``, ``change_address``, ``cancel_order`` and ``escalate``. The task type
``tool-calling/support-desk`` declares them (`Task.tools`), so a request that offers them
is of this type whatever its text (`flywheel.domains.Domains.task_for_tools`). Its
verifier reads the answer's calls (the Hermes text form, `flywheel.domains.tool_calls`)
and checks them against `TOOLS`: one call of an offered function, arguments valid under
its schema. A verifier cannot tell the right order id from a well-formed wrong one; the
simulator's ground truth (`flywheel.simulate.agent`) and the users' corrections can.

`domain` is what the ``flywheel.domains`` entry point ``support`` names.
"""

from __future__ import annotations

from pathlib import Path

from flywheel.domains.domain import Domain, Example, Task, Verdict
from flywheel.domains.errors import DomainError
from flywheel.domains.files import read_task_types
from flywheel.domains.tool_calls import check_tool_calls, parse_answer

__all__ = ["ESCALATION_TOPICS", "ORDER_ID", "PRIORITIES", "REFUND_REASONS", "SUPPORT_TASK", "TOOLS", "domain", "verify_support_call"]

SUPPORT_TASK = "tool-calling/support-desk"
_HERE = Path(__file__).parent

ORDER_ID = "^[A-Z][0-9]{5}$"
REFUND_REASONS = ("damaged", "late", "wrong_item", "not_received")
ESCALATION_TOPICS = ("billing", "delivery", "account", "product")
PRIORITIES = ("low", "normal", "high")


def _function(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {
        "name": name, "description": description,
        "parameters": {"type": "object", "properties": properties, "required": required,
                       "additionalProperties": False}}}


_ORDER = {"type": "string", "pattern": ORDER_ID, "description": "The order id, a capital letter and five digits."}

#: The support desk's functions (OpenAI tools).
TOOLS: tuple[dict, ...] = (
    _function("lookup_order", "Look up an order's status and delivery date.", {"order_id": _ORDER}, ["order_id"]),
    _function("issue_refund", "Refund (part of) an order to the customer.",
              {"order_id": _ORDER, "amount": {"type": "number", "exclusiveMinimum": 0, "description": "In dollars."},
               "reason": {"type": "string", "enum": list(REFUND_REASONS)}},
              ["order_id", "amount", "reason"]),
    _function("change_address", "Change the delivery address of an order not yet shipped.",
              {"order_id": _ORDER, "street": {"type": "string", "minLength": 1},
               "city": {"type": "string", "minLength": 1}, "postcode": {"type": "string", "minLength": 1}},
              ["order_id", "street", "city", "postcode"]),
    _function("cancel_order", "Cancel an order.", {"order_id": _ORDER}, ["order_id"]),
    _function("escalate", "Hand the conversation to a person.",
              {"topic": {"type": "string", "enum": list(ESCALATION_TOPICS)},
               "priority": {"type": "string", "enum": list(PRIORITIES)}},
              ["topic", "priority"]),
)

RUBRIC = ("exactly one call of the function the customer's message asks for, every argument taken from the message "
          "(order id as written, amount as a number, reason/topic/priority from the allowed values)")


def verify_support_call(messages: list[dict], answer: str) -> Verdict:
    """One call of a support-desk function with arguments valid under its schema (the
    answer in the Hermes text form)."""
    _, calls = parse_answer(answer)
    return check_tool_calls(TOOLS, calls, "required", False)


(_type,) = read_task_types(_HERE / "task_types.yaml")
if _type.name != SUPPORT_TASK:
    raise DomainError(f"{_HERE / 'task_types.yaml'} must declare {SUPPORT_TASK}, not {_type.name}")

domain = Domain(
    name="support",
    description="A shop's support-desk agent that answers customers by calling one of five functions.",
    tasks=(Task(
        type=_type,
        verifier=verify_support_call,
        examples=(
            Example("Where is my order A10234?",
                    '<tool_call>\n{"name":"lookup_order","arguments":{"order_id":"A10234"}}\n</tool_call>'),
            Example("Order B20417 arrived damaged, please refund the $25.50.",
                    '<tool_call>\n{"name":"issue_refund","arguments":{"order_id":"B20417","amount":25.5,'
                    '"reason":"damaged"}}\n</tool_call>'),
            Example("I was charged twice for my subscription, this is urgent, I want a person.",
                    '<tool_call>\n{"name":"escalate","arguments":{"topic":"billing","priority":"high"}}\n</tool_call>'),
        ),
        tools=TOOLS,
    ),),
    rubric=RUBRIC,
)
