from __future__ import annotations
from typing import Any, Sequence
import pytest
import convo
from convo import ContextBuilder, Message
import convo._context.plan as P
from test_context_edges import COUNTER, MODEL, EchoTemplate, conversation, words


class Rec:
    def __init__(self, text="earlier talk"):
        self.calls = []
        self.text = text
    def summarize(self, messages, *, previous, max_tokens):
        self.calls.append(([m.seq for m in messages], previous))
        return self.text + f" {messages[-1].seq}"


def _turns(n, size=10):
    out = []
    for k in range(n):
        out += [Message.user(f"q{k} " + words(size)), Message.assistant(f"a{k} " + words(size))]
    return out


@pytest.mark.parametrize("lw", [0.5, 0.9, None])
@pytest.mark.parametrize("factor", [1.2, 1.5, 1.8])
def test_explore(make_db, monkeypatch, lw, factor):
    store = convo.Store(make_db("sqlite"))
    log = []
    oh, osum = P.hysteresis, P.summarize
    def h(*a, **k):
        log.append(("hyst", a[1].dropped_through))
        return (yield from oh(*a, **k))
    def s(*a, **k):
        log.append(("summ", a[1].dropped_through, type(a[3]).__name__))
        return (yield from osum(*a, **k))
    monkeypatch.setattr(P, "hysteresis", h)
    monkeypatch.setattr(P, "summarize", s)
    history = [Message.system("Be terse."), *_turns(6, 20), Message.user("now")]
    cid = conversation(store, history)
    tpl = EchoTemplate()
    est = COUNTER.count(tpl.render(history)) // 2
    budget = int(est * factor)
    rec = Rec()
    try:
        ctx = ContextBuilder(store, model=MODEL, mode="completion", template=tpl, budget=budget,
                             summarizer=rec, summary_max_tokens=20, low_water=lw).build(cid)
        r = ctx.report
        print("\nRESULT", lw, factor, budget, log, rec.calls, r.kept_seqs, r.stop_reason, r.low_water, r.prompt_tokens, r.summary)
    except Exception as e:
        print("\nRESULT", lw, factor, budget, log, rec.calls, repr(e))
    store.close()
