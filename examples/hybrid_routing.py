"""Edge-cloud hybrid routing with `ChatNeedle(fallback=...)`, on a scripted travel-planning session.

Needle (local, CPU, milliseconds) takes every tool decision it is sure of; the fallback (a cloud
chat model) answers free-text questions and the decisions Needle scores below
``confidence_threshold``. Here the cloud model is a fake (`FakeCloudModel`): scripted replies,
a call counter and a *simulated* latency and price per call, so the script runs offline in a
few seconds. Pass ``--sleep`` to really wait the simulated latency.

Each user turn runs a tiny agent loop: the model decides (tool calls or text); tool calls run
as real Python functions and the model is asked again, now with the tool results, to answer.
Every model call is one row of the table.

Needle sees the current turn only (the user's message and the tool results of this turn): the
bundled model is trained on single requests and its decisions degrade when earlier turns are
in its input. A real application would give the cloud fallback the whole conversation.

    python examples/hybrid_routing.py [--threshold 0.5] [--sleep]
"""

from __future__ import annotations

import argparse
import time
from typing import Any, Literal

from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.tools import tool
from pydantic import Field

from needle_adapters.langchain import ChatNeedle

CLOUD_LATENCY_MS = 800.0  # simulated round trip of the cloud model, per call
CLOUD_PRICE_PER_CALL = 0.002  # simulated $ per cloud call (about 2k tokens at $1 / M tokens)


# -- the tools: real Python functions ----------------------------------------------------------

RATES = {"EUR": 1.08, "USD": 1.0, "GBP": 1.27, "JPY": 0.0067}


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"] = "celsius") -> str:
    """Get the current weather for a city."""
    temp = {"Lisbon": 17, "Porto": 15}.get(city, 20)
    return f"{city}: {temp if unit == 'celsius' else round(temp * 9 / 5 + 32)} degrees {unit}, light rain"


@tool
def convert_currency(amount: float, from_currency: str, to_currency: str) -> str:
    """Convert an amount of money from one currency to another (ISO codes like EUR, USD)."""
    value = amount * RATES[from_currency.upper()] / RATES[to_currency.upper()]
    return f"{amount:g} {from_currency} = {value:.2f} {to_currency}"


@tool
def search_hotels(city: str, max_price: float) -> str:
    """Search hotels in a city under a maximum nightly price."""
    return f"3 hotels in {city} under {max_price:g}: Casa Azul (95), Hotel Tejo (110), Alfama Inn (118)"


@tool
def send_email(to: str, subject: str, body: str) -> str:
    """Send an e-mail to an address."""
    return f"e-mail to {to} sent (subject {subject!r})"


TOOLS = [get_weather, convert_currency, search_hotels, send_email]
BY_NAME = {t.name: t for t in TOOLS}


# -- the fake cloud model ----------------------------------------------------------------------


class FakeCloudModel(BaseChatModel):
    """A stand-in for a cloud chat model: scripted tool calls for some requests, canned text
    otherwise. Counts its calls and the latency and cost they would have had."""

    tool_calls: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    answers: dict[str, str] = Field(default_factory=dict)
    latency_ms: float = CLOUD_LATENCY_MS
    sleep: bool = False
    calls: int = 0

    @property
    def _llm_type(self) -> str:
        return "fake-cloud"

    def bind_tools(self, tools: Any, *, tool_choice: Any = None, **kwargs: Any):
        return self.bind(tools=tools, **kwargs)

    def _generate(self, messages: list[BaseMessage], stop: Any = None, run_manager: Any = None, **kwargs: Any):
        self.calls += 1
        if self.sleep:
            time.sleep(self.latency_ms / 1000)
        request = [m for m in messages if isinstance(m, HumanMessage)][-1].text
        if isinstance(messages[-1], ToolMessage):  # tool results are in: write the answer
            reply = AIMessage("Done: " + "; ".join(m.text for m in messages if isinstance(m, ToolMessage)))
        elif kwargs.get("tools") and request in self.tool_calls:
            calls = [{"name": c["name"], "args": c["args"], "id": f"cloud_{self.calls}_{i}"}
                     for i, c in enumerate(self.tool_calls[request])]
            reply = AIMessage("", tool_calls=calls)
        else:
            reply = AIMessage(self.answers.get(request, "Happy to help with that."))
        reply.response_metadata["model_name"] = "fake-cloud"
        return ChatResult(generations=[ChatGeneration(message=reply)])


# -- the session -------------------------------------------------------------------------------

TURNS = [
    "What's the weather in Lisbon?",
    "Find hotels in Lisbon under 120 EUR a night",
    "Convert 120 EUR to USD",
    "What should I pack for a rainy weekend?",
    "Convert ninety dollars to euros",
    "Is Lisbon or Porto better for a first visit?",
    "Weather in Porto in fahrenheit please",
    'Send an email to alice@example.com with subject Lunch and body "See you at noon"',
    "Email bob@corp.com, subject: Report, body: The Q3 report is attached.",
    "Thanks! Can you summarise my plan in two sentences?",
]

CLOUD_CALLS = {  # what the (smarter) cloud model decides, for the requests Needle may escalate
    "Convert ninety dollars to euros": [
        {"name": "convert_currency", "args": {"amount": 90.0, "from_currency": "USD", "to_currency": "EUR"}}],
    "Email bob@corp.com, subject: Report, body: The Q3 report is attached.": [
        {"name": "send_email",
         "args": {"to": "bob@corp.com", "subject": "Report", "body": "The Q3 report is attached."}}],
}
CLOUD_ANSWERS = {
    "What should I pack for a rainy weekend?": "A light rain jacket, an umbrella and shoes that survive wet cobbles.",
    "Is Lisbon or Porto better for a first visit?": "Lisbon: more to see in a weekend; Porto is a great day trip.",
    "Thanks! Can you summarise my plan in two sentences?":
        "A rainy weekend in Lisbon at a hotel under 120 EUR. Pack for rain, and Porto can wait.",
}


def short(message: BaseMessage, width: int = 72) -> str:
    if isinstance(message, AIMessage) and message.tool_calls:
        text = ", ".join(f"{c['name']}({', '.join(f'{k}={v!r}' for k, v in c['args'].items())})"
                         for c in message.tool_calls)
    else:
        text = " ".join(message.text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def run(threshold: float = 0.5, sleep: bool = False) -> dict[str, Any]:
    cloud = FakeCloudModel(tool_calls=CLOUD_CALLS, answers=CLOUD_ANSWERS, sleep=sleep)
    llm = ChatNeedle(fallback=cloud, confidence_threshold=threshold).bind_tools(TOOLS)
    llm.invoke("warm-up: weather in Paris")  # loads the model once, outside the timings

    rows, local_turns = [], 0
    print(f"{'turn':>4}  {'step':<8} {'answered by':<11} {'why':<14} {'conf':>5} {'ms':>7}  output")
    for n, request in enumerate(TURNS, 1):
        window: list[BaseMessage] = [HumanMessage(request)]  # this turn only (see the docstring)
        print(f"{n:>4}  user: {request}")
        turn_local = True
        for step in ("decide", "answer", "answer 2"):
            t0 = time.perf_counter()
            reply = llm.invoke(window)
            wall_ms = (time.perf_counter() - t0) * 1e3
            who = reply.response_metadata.get("answered_by", "?")
            latency = wall_ms + (cloud.latency_ms if who == "fallback" and not sleep else 0.0)
            conf = reply.response_metadata.get("confidence")
            if who == "needle":
                why = "tool decision" if reply.tool_calls else "states results"
            else:
                why = "low confidence" if conf is not None and conf < threshold else "needs text"
            rows.append({"turn": n, "step": step, "answered_by": who, "why": why, "confidence": conf, "ms": latency})
            turn_local &= who == "needle"
            conf_text = f"{conf:5.2f}" if conf is not None else "    -"
            print(f"{'':>4}  {step:<8} {who:<11} {why:<14} {conf_text} {latency:7.1f}  {short(reply)}")
            window.append(reply)
            if not reply.tool_calls:
                break
            for call in reply.tool_calls:  # run the tools, then ask the model again with the results
                window.append(ToolMessage(BY_NAME[call["name"]].invoke(call["args"]), tool_call_id=call["id"],
                                          name=call["name"]))
        local_turns += turn_local

    local = [r for r in rows if r["answered_by"] == "needle"]
    remote = [r for r in rows if r["answered_by"] == "fallback"]
    local_ms, remote_ms = sum(r["ms"] for r in local), sum(r["ms"] for r in remote)
    all_cloud_ms = len(rows) * cloud.latency_ms
    summary = {
        "turns": len(TURNS), "local_turns": local_turns, "model_calls": len(rows), "local_calls": len(local),
        "fallback_calls": cloud.calls, "local_ms": local_ms, "fallback_ms": remote_ms,
        "fallback_cost": cloud.calls * CLOUD_PRICE_PER_CALL, "all_cloud_ms": all_cloud_ms,
        "all_cloud_cost": len(rows) * CLOUD_PRICE_PER_CALL,
    }
    print()
    print(f"Summary: {local_turns}/{len(TURNS)} turns kept local ({local_turns / len(TURNS):.0%}); "
          f"model calls: {len(local)} Needle, {cloud.calls} fallback (threshold {threshold})")
    print(f"  latency: Needle {local_ms:.0f} ms in all ({local_ms / max(1, len(local)):.1f} ms per call), "
          f"fallback {remote_ms:.0f} ms ({'slept' if sleep else 'simulated'}: {cloud.latency_ms:.0f} ms per call)")
    print(f"  cloud cost: ${summary['fallback_cost']:.3f} for {cloud.calls} calls, against "
          f"${summary['all_cloud_cost']:.3f} and {all_cloud_ms / 1000:.1f} s if the cloud model made all "
          f"{len(rows)} calls")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threshold", type=float, default=0.5, help="confidence below which Needle escalates")
    parser.add_argument("--sleep", action="store_true", help="really wait the simulated cloud latency")
    args = parser.parse_args(argv)
    run(args.threshold, args.sleep)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
