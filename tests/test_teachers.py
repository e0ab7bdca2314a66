"""Offline tests of training/teachers.py with scripted fake LangChain chat models."""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import types
from typing import Any

import pytest
from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from pydantic import ConfigDict, Field, PrivateAttr

from training import teachers
from training.teachers import (
    DistillReport,
    TeacherError,
    filter_teacher_calls,
    is_grounded,
    label_queries,
    make_teacher,
    row_id,
    synthesize,
    ungrounded_arguments,
)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather for a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer", "description": "Forecast days"},
                },
                "required": ["city"],
            },
        },
    },
    {
        "name": "send_email",
        "description": "Send an e-mail.",
        "parameters": {
            "type": "object",
            "properties": {
                "to": {"type": "string"},
                "subject": {"type": "string"},
                "urgent": {"type": "boolean"},
                "cc": {"type": "array", "items": {"type": "string"}},
            },
            "required": ["to", "subject"],
        },
    },
]

FAST = dict(retry_base_delay=0.0, progress=False, print_summary=False, request_timeout=None)


def specs():
    from needle_core.schema import to_tool_specs

    return to_tool_specs(TOOLS)


def call(name: str, **args: Any) -> dict[str, Any]:
    return {"name": name, "args": args, "id": f"call_{name}", "type": "tool_call"}


def reply(*calls: dict[str, Any], content: str = "") -> AIMessage:
    return AIMessage(content=content, tool_calls=list(calls))


class SimulatedCrash(BaseException):
    """Not an Exception: retries do not catch it, like a kill."""


class ScriptedTeacher(BaseChatModel):
    """A fake teacher. ``script`` maps the user's request to a list of replies used in turn
    (the last one repeats); a reply is an AIMessage, an exception (raised) or a callable.
    Requests without ``tools`` bound (synthesis prompts) get ``synth_replies`` in turn."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    script: dict = Field(default_factory=dict)
    default: Any = None
    synth_replies: list = Field(default_factory=list)
    crash_after: int | None = None  # raise SimulatedCrash once this many replies were given
    delay: float = 0.0
    usage: tuple = (100, 20)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)
    _attempts: dict = PrivateAttr(default_factory=dict)
    _log: list = PrivateAttr(default_factory=list)
    _served: int = PrivateAttr(default=0)
    _in_flight: int = PrivateAttr(default=0)
    _max_in_flight: int = PrivateAttr(default=0)
    _synth_i: int = PrivateAttr(default=0)

    @property
    def _llm_type(self) -> str:
        return "scripted-fake"

    def bind_tools(self, tools, *, tool_choice=None, **kwargs):
        return self.bind(tools=tools, tool_choice=tool_choice, **kwargs)

    def _pick(self, messages, kwargs) -> AIMessage:
        query = [m for m in messages if isinstance(m, HumanMessage)][-1].content
        with self._lock:
            self._log.append(query)
            if "tools" not in kwargs:
                item = self.synth_replies[min(self._synth_i, len(self.synth_replies) - 1)]
                self._synth_i += 1
            else:
                assert all(t["type"] == "function" for t in kwargs["tools"])
                seq = self.script.get(query, [self.default])
                i = self._attempts.get(query, 0)
                self._attempts[query] = i + 1
                item = seq[min(i, len(seq) - 1)]
        if callable(item) and not isinstance(item, AIMessage):
            item = item(query)
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, str):
            item = AIMessage(content=item)
        if item is None:
            item = AIMessage(content="I can't help with that using the tools.")
        with self._lock:
            self._served += 1
        msg = item.model_copy()
        msg.usage_metadata = {
            "input_tokens": self.usage[0],
            "output_tokens": self.usage[1],
            "total_tokens": sum(self.usage),
        }
        return msg

    async def ainvoke(self, input, config=None, **kwargs):
        # the crash is raised outside LangChain's generate machinery, which would wrap it
        if self.crash_after is not None and self._served >= self.crash_after:
            raise SimulatedCrash(f"killed after {self._served} replies")
        return await super().ainvoke(input, config, **kwargs)

    def _generate(self, messages, stop=None, run_manager=None, **kwargs):
        return ChatResult(generations=[ChatGeneration(message=self._pick(messages, kwargs))])

    async def _agenerate(self, messages, stop=None, run_manager=None, **kwargs):
        with self._lock:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            await asyncio.sleep(self.delay)
            return self._generate(messages, stop, run_manager, **kwargs)
        finally:
            with self._lock:
                self._in_flight -= 1


def read_rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# ------------------------------------------------------------------ grounding rule


def test_is_grounded_rule():
    req = "What's the weather in New York for the next 3 days? Email Ana about the 1,000 invoices."
    assert is_grounded("new york", req)  # case-insensitive word overlap
    assert is_grounded("New York City", req)  # sharing words is enough
    assert not is_grounded("Paris", req)
    assert not is_grounded("the moon", req)  # stopwords alone do not ground
    assert is_grounded(3, req) and is_grounded(3.0, req)
    assert is_grounded(1000, req)  # thousands separator
    assert not is_grounded(7, req)
    assert is_grounded(2, "book two tickets")  # simple number words
    assert is_grounded(True, req) and is_grounded(False, req) and is_grounded(None, req)
    assert not is_grounded("", req)
    assert is_grounded("你好", "请说你好")  # scripts without spaces: substring
    assert not is_grounded("再见", "请说你好")
    assert not is_grounded(float("nan"), "nan")


def test_ungrounded_arguments_exempts_enums_and_walks_containers():
    params = specs()[1].parameters
    req = "mail bob@example.com about lunch, cc alice"
    assert (
        ungrounded_arguments(
            {"to": "bob@example.com", "subject": "lunch", "urgent": True, "cc": ["alice"]}, params, req
        )
        == []
    )
    assert ungrounded_arguments({"to": "bob@example.com", "subject": "lunch", "cc": ["alice", "zed"]}, params, req) == [
        "cc[1]"
    ]
    weather = specs()[0].parameters
    # "fahrenheit" never appears in the request, but it is an enum option: exempt
    assert ungrounded_arguments({"city": "Oslo", "unit": "fahrenheit"}, weather, "weather in oslo") == []


# ------------------------------------------------------------------ the filter


def test_filter_teacher_calls_reasons_and_coercion():
    s = specs()
    q = "Weather in Oslo for 3 days please"
    kept, reason = filter_teacher_calls(q, [{"name": "get_weather", "args": {"city": "Oslo", "days": "3"}}], s)
    assert reason is None
    assert kept == [{"name": "get_weather", "arguments": {"city": "Oslo", "days": 3}}]  # coerced
    assert filter_teacher_calls(q, [{"name": "get_time", "arguments": {}}], s) == ([], "undeclared_tool")
    assert filter_teacher_calls(q, [{"name": "get_weather", "arguments": {"days": 3}}], s) == ([], "missing_required")
    assert filter_teacher_calls(q, [{"name": "get_weather", "arguments": {"city": "Oslo", "days": "many"}}], s) == (
        [],
        "invalid_arguments",
    )
    assert filter_teacher_calls(q, [{"name": "get_weather", "arguments": {"city": "Oslo", "lang": "en"}}], s) == (
        [],
        "undeclared_argument",
    )
    assert filter_teacher_calls(q, [{"name": "get_weather", "arguments": {"city": "Bergen"}}], s) == (
        [],
        "ungrounded_value",
    )
    # one bad call spoils the example; identical repeated calls are merged
    good = {"name": "get_weather", "arguments": {"city": "Oslo"}}
    assert filter_teacher_calls(q, [good, {"name": "nope", "arguments": {}}], s) == ([], "undeclared_tool")
    kept, reason = filter_teacher_calls(q, [good, dict(good)], s)
    assert reason is None and kept == [good]
    assert filter_teacher_calls(q, [], s) == ([], None)  # no call is a valid label


# ------------------------------------------------------------------ labelling


def test_label_queries_filters_retries_dedups_and_reports(tmp_path, capsys):
    out = tmp_path / "data.jsonl"
    flaky = "weather in Oslo"
    script = {
        flaky: [RuntimeError("429 rate limited"), RuntimeError("503"), reply(call("get_weather", city="Oslo"))],
        "Weather in  OSLO": [reply(call("get_weather", city="Oslo"))],  # same query+calls: duplicate
        "mail ana@x.org about the budget": [reply(call("send_email", to="ana@x.org", subject="budget"))],
        "what time is it in Rome": [reply(call("get_time", city="Rome"))],  # undeclared tool
        "weather in Lima": [reply(call("get_weather", city="Tokyo"))],  # ungrounded
        "email someone": [reply(call("send_email", to="someone"))],  # missing required
        "tell me a joke": [reply(content="Why did the chicken...")],  # no call: kept
        "always failing": [RuntimeError("boom")],  # retries exhausted
        "broken json": [
            AIMessage(
                content="",
                invalid_tool_calls=[
                    {
                        "name": "get_weather",
                        "args": "{city:",
                        "id": "c1",
                        "error": "bad json",
                        "type": "invalid_tool_call",
                    }
                ],
            )
        ],
    }
    teacher = ScriptedTeacher(script=script)
    queries = list(script) + [flaky]  # the same request twice in the input
    report = label_queries(teacher, queries, TOOLS, out, concurrency=3, max_retries=2, price_per_mtok=1.0, **FAST)

    rows = read_rows(out)
    by_query = {r["messages"][0]["content"]: r for r in rows}
    # of the two spellings of one request with the same calls, whichever finished first is kept
    oslo = [q for q in by_query if q.casefold().split() == ["weather", "in", "oslo"]]
    assert len(oslo) == 1
    assert set(by_query) == {oslo[0], "mail ana@x.org about the budget", "tell me a joke"}
    assert by_query[oslo[0]]["calls"] == [{"name": "get_weather", "arguments": {"city": "Oslo"}}]
    assert by_query["tell me a joke"]["calls"] == []
    data = pytest.importorskip("training.data")
    for r in rows:
        assert set(r) == {"messages", "tools", "calls", "source", "teacher", "id"}
        assert data.validate_example(r) == []  # the canonical training-example contract
        assert r["source"] == "distill" and r["teacher"] == "ScriptedTeacher"
        assert [t["name"] for t in r["tools"]] == ["get_weather", "send_email"]
        assert r["id"] == row_id(r["messages"], ["get_weather", "send_email"])
    assert teacher._attempts[flaky] == 3  # two failures, then success
    assert teacher._attempts["always failing"] == 3  # 1 + max_retries
    assert report.kept == 3
    assert dict(report.rejected) == {
        "duplicate": 2,
        "undeclared_tool": 1,
        "ungrounded_value": 1,
        "missing_required": 1,
        "teacher_error": 1,
        "invalid_tool_call": 1,
    }
    assert report.total == len(queries) and report.done == len(queries)
    # usage: one reply per successful request (failures raise before any usage)
    served = teacher._served
    assert report.input_tokens == 100 * served and report.output_tokens == 20 * served
    assert report.cost == pytest.approx(120 * served / 1e6)
    text = report.summary()
    assert "ungrounded_value" in text and "3 rows written" in text

    rejects = read_rows(tmp_path / "data.jsonl.rejects.jsonl")
    assert {r["reason"] for r in rejects} == {
        "duplicate",
        "undeclared_tool",
        "ungrounded_value",
        "missing_required",
        "invalid_tool_call",
    }
    # a rerun asks the teacher only about the request that failed with errors, nothing else
    teacher2 = ScriptedTeacher(script={"always failing": [reply(content="ok, no tool")]})
    report2 = label_queries(teacher2, queries, TOOLS, out, max_retries=0, **FAST)
    assert teacher2._log == ["always failing"]
    assert report2.kept == 1 and report2.skipped == len(queries) - 1
    assert len({r["id"] for r in read_rows(out)}) == len(read_rows(out)) == 4


def test_concurrency_is_bounded(tmp_path):
    queries = [f"weather in city{i}" for i in range(24)]
    teacher = ScriptedTeacher(default=lambda q: reply(call("get_weather", city=q.split()[-1])), delay=0.01)
    report = label_queries(teacher, queries, TOOLS, tmp_path / "o.jsonl", concurrency=3, **FAST)
    assert report.kept == 24
    assert 1 < teacher._max_in_flight <= 3


def test_resume_after_crash_has_no_duplicates(tmp_path):
    out = tmp_path / "data.jsonl"
    queries = [f"weather in town{i}" for i in range(30)]
    script = lambda q: reply(call("get_weather", city=q.split()[-1]))  # noqa: E731
    crashing = ScriptedTeacher(default=script, crash_after=11)
    with pytest.raises(SimulatedCrash):
        label_queries(crashing, queries, TOOLS, out, concurrency=4, **FAST)
    first = read_rows(out)
    assert 11 <= len(first) <= 11 + 3  # requests already in flight may still land; nothing new starts
    # a kill in the middle of a write leaves a torn last line: the rerun cuts it off
    with out.open("a", encoding="utf-8") as fh:
        fh.write('{"messages": [{"role": "user", "content": "weather in to')

    healthy = ScriptedTeacher(default=script)
    report = label_queries(healthy, queries, TOOLS, out, concurrency=4, **FAST)
    rows = read_rows(out)  # would fail on a torn line
    ids = [r["id"] for r in rows]
    assert len(ids) == len(set(ids)) == 30
    assert {r["messages"][0]["content"] for r in rows} == set(queries)
    assert report.skipped == len(first) and report.kept == 30 - len(first)
    assert len(healthy._log) == 30 - len(first)  # nothing asked twice

    again = ScriptedTeacher(default=script)
    report = label_queries(again, queries, TOOLS, out, **FAST)
    assert again._log == [] and report.skipped == 30 and len(read_rows(out)) == 30


def test_consecutive_failures_abort(tmp_path):
    teacher = ScriptedTeacher(default=RuntimeError("401 invalid API key"))
    with pytest.raises(TeacherError, match="401 invalid API key"):
        label_queries(
            teacher,
            [f"q{i}" for i in range(50)],
            TOOLS,
            tmp_path / "o.jsonl",
            max_retries=1,
            max_consecutive_failures=5,
            **FAST,
        )
    assert len(teacher._log) < 50 * 2


def test_progress_bar_and_summary_show_cost(tmp_path, capsys):
    teacher = ScriptedTeacher(default=lambda q: reply(call("get_weather", city="Oslo")))
    label_queries(
        teacher,
        ["weather in Oslo", "Oslo weather now", "go to Mars"],
        TOOLS,
        tmp_path / "o.jsonl",
        price_per_mtok=2.0,
        retry_base_delay=0.0,
        request_timeout=None,
    )
    err = capsys.readouterr().err
    assert "3/3" in err and "cost=$" in err
    assert "ungrounded_value" in err and "estimated cost $0.0007" in err  # 3 * 120 tokens * $2/M


# ------------------------------------------------------------------ synthesis

SYNTH_JSON = json.dumps(
    [
        {"request": "What's the weather in Kyoto?", "uses_tools": True},
        {"request": "Email lee@corp.com with subject Q3 report", "uses_tools": True},
        {"request": "Who wrote Hamlet?", "uses_tools": False},
        {"request": "Is it raining in Quito?", "uses_tools": False},  # mislabelled: the teacher calls a tool
        "what's the weather in kyoto?",  # duplicate of the first (case)
    ]
)


def synth_labeler(q: str) -> AIMessage:
    if "Kyoto" in q:
        return reply(call("get_weather", city="Kyoto"))
    if "lee@corp.com" in q:
        return reply(call("send_email", to="lee@corp.com", subject="Q3 report"))
    if "Quito" in q:
        return reply(call("get_weather", city="Quito"))
    return reply(content="Shakespeare.")


def test_synthesize_then_label(tmp_path):
    out = tmp_path / "synth.jsonl"
    more = json.dumps([{"request": "Weather for Lima in fahrenheit", "uses_tools": True}])
    teacher = ScriptedTeacher(
        default=synth_labeler, synth_replies=["not json at all", "```json\n" + SYNTH_JSON + "\n```", more]
    )
    report = synthesize(teacher, TOOLS, 5, out, batch_size=5, max_retries=1, **FAST)
    requests = read_rows(tmp_path / "synth.jsonl.requests.jsonl")
    assert [r["query"] for r in requests] == [
        "What's the weather in Kyoto?",
        "Email lee@corp.com with subject Q3 report",
        "Who wrote Hamlet?",
        "Is it raining in Quito?",
        "Weather for Lima in fahrenheit",
    ]
    rows = read_rows(out)
    assert {r["messages"][0]["content"] for r in rows} == {
        "What's the weather in Kyoto?",
        "Email lee@corp.com with subject Q3 report",
        "Who wrote Hamlet?",
        "Weather for Lima in fahrenheit",
    }
    assert all(r["source"] == "synthetic" for r in rows)
    assert report.rejected == {"offtopic_called": 1}
    assert report.synthesized == 5 and report.kept == 4
    prompts = [q for q in teacher._log if "JSON array" in q]
    assert len(prompts) == 3 and "get_weather" in prompts[0] and "send_email" in prompts[0]

    # rerun: reuses the saved requests, asks nothing new
    again = ScriptedTeacher(default=synth_labeler, synth_replies=[SYNTH_JSON])
    report = synthesize(again, TOOLS, 5, out, batch_size=5, **FAST)
    assert again._log == [] and report.skipped == 5 and len(read_rows(out)) == 4


def test_synthesize_gives_up_on_a_teacher_that_never_answers(tmp_path):
    teacher = ScriptedTeacher(synth_replies=[RuntimeError("down")])
    with pytest.raises(TeacherError, match="synthesis"):
        synthesize(teacher, TOOLS, 100, tmp_path / "s.jsonl", max_retries=0, max_consecutive_failures=3, **FAST)


# ------------------------------------------------------------------ teachers and CLI


def test_make_teacher_module_attr_and_errors(monkeypatch):
    mod = types.ModuleType("needle_fake_teacher_mod")
    mod.Factory = ScriptedTeacher
    mod.build = lambda **kw: ScriptedTeacher(**kw)
    mod.instance = ScriptedTeacher()
    mod.not_a_model = lambda **kw: 42
    monkeypatch.setitem(sys.modules, "needle_fake_teacher_mod", mod)
    assert isinstance(make_teacher("needle_fake_teacher_mod:Factory", delay=0.5), ScriptedTeacher)
    assert make_teacher("needle_fake_teacher_mod:build", delay=0.5).delay == 0.5
    assert make_teacher("needle_fake_teacher_mod:instance") is mod.instance
    with pytest.raises(TeacherError, match="not a LangChain chat model"):
        make_teacher("needle_fake_teacher_mod:not_a_model")
    with pytest.raises(TeacherError, match="no attribute"):
        make_teacher("needle_fake_teacher_mod:missing")
    with pytest.raises(TeacherError, match="unknown teacher"):
        make_teacher("claude")

    # missing packages name the pip package
    monkeypatch.setitem(sys.modules, "langchain_google_genai", None)
    monkeypatch.setitem(sys.modules, "langchain_openai", None)
    with pytest.raises(TeacherError, match="pip install langchain-google-genai"):
        make_teacher("gemini")
    with pytest.raises(TeacherError, match="pip install langchain-openai"):
        make_teacher("openai")

    # missing keys name the environment variable
    made = {}
    genai = types.ModuleType("langchain_google_genai")
    genai.ChatGoogleGenerativeAI = lambda **kw: made.setdefault("gemini", kw)
    oai = types.ModuleType("langchain_openai")
    oai.ChatOpenAI = lambda **kw: made.setdefault("openai", kw)
    monkeypatch.setitem(sys.modules, "langchain_google_genai", genai)
    monkeypatch.setitem(sys.modules, "langchain_openai", oai)
    for var in ("GOOGLE_API_KEY", "GEMINI_API_KEY", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(TeacherError, match="GOOGLE_API_KEY"):
        make_teacher("gemini")
    with pytest.raises(TeacherError, match="OPENAI_API_KEY"):
        make_teacher("openai")
    monkeypatch.setenv("GOOGLE_API_KEY", "k")
    make_teacher("gemini", temperature=0.2)
    assert made["gemini"] == {"model": "gemini-2.5-flash", "temperature": 0.2}
    make_teacher("openai", base_url="http://localhost:8000/v1", model="qwen")  # local server: no key needed
    assert made["openai"]["base_url"] == "http://localhost:8000/v1" and made["openai"]["model"] == "qwen"


def test_cli_distill(tmp_path, monkeypatch, capsys):
    from needle_core.cli import main

    mod = types.ModuleType("needle_fake_teacher_cli")
    mod.build = lambda **kw: ScriptedTeacher(default=synth_labeler, **kw)
    monkeypatch.setitem(sys.modules, "needle_fake_teacher_cli", mod)
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(TOOLS))
    queries = tmp_path / "queries.txt"
    queries.write_text("What's the weather in Kyoto?\n\nWho wrote Hamlet?\n")
    out = tmp_path / "out.jsonl"
    argv = [
        "distill",
        "--teacher",
        "needle_fake_teacher_cli:build",
        "--teacher-arg",
        "delay=0.001",
        "--tools",
        str(tools),
        "--queries",
        str(queries),
        "--out",
        str(out),
        "--concurrency",
        "2",
        "--max-retries",
        "1",
        "--price-per-mtok",
        "0.1",
        "--no-progress",
    ]
    assert main(argv) == 0
    assert len(read_rows(out)) == 2
    assert "2 rows written" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "langchain_google_genai", None)
    assert main(["distill", "--tools", str(tools), "--synthesize", "10", "--out", str(out)]) == 2
    assert "langchain-google-genai" in capsys.readouterr().err
    assert main(["distill", "--tools", str(tmp_path / "nope.json"), "--queries", str(queries), "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_read_queries_jsonl(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text(
        '"plain"\n{"query": "q2", "uses_tools": false}\n'
        '{"messages": [{"role": "user", "content": "q3"}], "calls": []}\n'
    )
    got = teachers.read_queries(p)
    assert got[0] == "plain" and got[1] == {"query": "q2", "uses_tools": False}
    assert got[2]["messages"][0]["content"] == "q3"


async def test_label_inside_a_running_event_loop(tmp_path):
    teacher = ScriptedTeacher(default=lambda q: reply(call("get_weather", city="Oslo")))
    report = await teachers.alabel_queries(teacher, ["weather in Oslo"], TOOLS, tmp_path / "a.jsonl", **FAST)
    assert report.kept == 1
    # the sync API also works from a running loop (e.g. Jupyter): it runs in a worker thread
    report = label_queries(teacher, ["Weather in  OSLO"], TOOLS, tmp_path / "a.jsonl", **FAST)
    assert report.rejected == {"duplicate": 1}


def test_report_cost_with_separate_output_price():
    r = DistillReport(input_tokens=1_000_000, output_tokens=500_000, price_per_mtok=0.1, output_price_per_mtok=0.4)
    assert r.cost == pytest.approx(0.3)


def test_jsonl_repair(tmp_path):
    p = tmp_path / "r.jsonl"
    p.write_bytes(b'{"id": "a"}\nnot json\n{"id": "b"}')  # a bad middle line; a last row without newline
    assert [r["id"] for r in teachers._iter_jsonl(p, repair=True)] == ["a", "b"]
    assert p.read_bytes().endswith(b'{"id": "b"}\n')
    p.write_bytes(b'{"id": "a"}\n{"id": "b", "mess')  # torn last line
    assert [r["id"] for r in teachers._iter_jsonl(p, repair=True)] == ["a"]
    assert p.read_bytes() == b'{"id": "a"}\n'
