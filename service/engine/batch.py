"""The decode batch: the generation streams that advance together, one row each, kept as batch
arrays (TGI-style keyed state cache): each step's outputs are the next step's inputs, joining
concatenates rows and leaving filters them. Owned by the model's engine thread."""

from __future__ import annotations

import numpy as np

from service.engine.holes import fill, order, plan
from service.engine.prefill import StateRows
from service.engine.row_params import Rows
from service.engine.sampling import Draws, all_plain
from service.engine.state_place import Held, StatePlace
from service.engine.stops import StopTable
from service.engine.stream import Stream, TokenSink

# (sink, stream ids, tokens, ids of the streams whose last token this is or None): one step's
# tokens for one consumer of routed rows
Routed = list[tuple[TokenSink, np.ndarray, np.ndarray, np.ndarray | None]]


class DecodeBatch:
    def __init__(self, place: StatePlace) -> None:
        self.place = place  # where the rows' state lives between steps (host or device)
        # a tuple, replaced (never changed in place) when rows join or leave: a step hands it to
        # the loop with its tokens, and the next step's joins must not change what that sees
        self.streams: tuple[Stream, ...] = ()
        self.states: Held = []
        self.logits = np.zeros((0, 0), np.float32)  # (n, K): what the next step samples from
        self.rows = Rows.of([])
        self.draws = Draws()  # the rows' next random draws, computed a block at a time
        # derived when rows join or leave, not every step
        self.plain = True  # every row temperature-only (see sampling.all_plain)
        self.until_done = 0  # steps until the first row reaches its max_tokens
        self.fresh = False  # rows joined that have not sampled their first token
        # where each row's tokens go (`stream.Route`): the index of its sink in `sinks` (-1:
        # the stream's own event buffer) and its id there; a step's tokens then leave as one
        # pair of arrays per sink (`routed`), and only `local` rows are walked in Python
        self.sinks: list[TokenSink] = []
        self.sink_of = np.zeros(0, np.int32)  # (n,)
        self.rids = np.zeros(0, np.int64)  # (n,)
        # the rows with no route, walked one by one: None = every row (one process), () = none
        self.local: tuple[int, ...] | None = None
        self._one_sink = False  # every row routed, all to one sink
        self.stops: StopTable | None = None  # the rows' stop automata (from the first join)

    def __len__(self) -> int:
        return len(self.streams)

    def join(self, new: list[Stream]) -> None:
        """Append `new` rows. Built aside and assigned together: if anything fails (it raises),
        the batch is unchanged and the new streams fail alone."""
        old = bool(self.streams)
        states = self.place.join(self.states if old else [], [s.states for s in new])
        logits = np.stack([s.logits for s in new])
        joined = Rows.of(new)
        rows = joined
        if old:
            logits = np.concatenate([self.logits, logits])
            rows = self.rows.concat(joined)
        sink_of, rids = self._routes(new)
        if self.stops is None:
            self.stops = StopTable(logits.shape[-1])
        self.stops.join([s.stop_automaton for s in new])
        self.states, self.logits, self.rows = states, logits, rows
        self.draws.join(joined.seeds, joined.count)
        self.sink_of = np.concatenate([self.sink_of, sink_of])
        self.rids = np.concatenate([self.rids, rids])
        self.streams = (*self.streams, *new)
        self.fresh = True
        self._changed()

    def keep(self, keep: np.ndarray) -> None:
        """Filter the batch to the rows where `keep` is True. The rows that stay past the new
        end move into the holes (`holes.py`): the large arrays (state, logits, draws) are moved
        in place and cut, O(rows leaving); the per-row parameters, small, are gathered (new
        arrays: the loop may still hold the last step's `rids`)."""
        holes, movers, m = plan(keep)
        idx = order(holes, movers, m)
        streams = list(self.streams)
        for h, mv in zip(holes.tolist(), movers.tolist(), strict=True):
            streams[h] = streams[mv]
        self.streams = tuple(streams[:m])
        self.states = self.place.leave(self.states, holes, movers, m)
        self.logits = fill(self.logits, holes, movers, m)
        self.rows = self.rows.take(idx)
        self.draws.leave(holes, movers, m)
        self.sink_of, self.rids = self.sink_of[idx], self.rids[idx]
        if self.stops is not None:
            self.stops.keep(idx)
        self._changed()

    def clear(self) -> None:
        self.streams, self.states = (), []
        self.logits = np.zeros((0, 0), np.float32)
        self.rows = Rows.of([])
        self.draws.clear()
        self.stops = None
        self._changed()  # (which forgets the sinks)

    def routed(self, tokens: np.ndarray, done: np.ndarray | None) -> Routed:
        """This step's `tokens` (n,) of the routed rows, split by sink, with the ids of the rows
        that end at this step (`done`, when any may): O(sinks) numpy calls."""
        if self._one_sink:  # the usual batch: every row goes to the one worker
            ends = None if done is None else self.rids[done]
            return [(self.sinks[0], self.rids, tokens, ends)]
        out: Routed = []
        for k, sink in enumerate(self.sinks):
            mine = self.sink_of == k
            if mine.any():
                ends = None if done is None else self.rids[mine & done]
                out.append((sink, self.rids[mine], tokens[mine], ends))
        return out

    def finished(
        self, done: np.ndarray, hits: np.ndarray | None
    ) -> list[tuple[Stream, np.ndarray | None, StateRows | None, int, str | None]]:
        """The rows `done` at this step (after `advance`): each stream, its logits and state
        rows after its last token (None for a stream that keeps no final state), the tokens
        it sampled and the stop string that ended it."""
        idx = np.flatnonzero(done).tolist()
        streams = self.streams
        kept = [i for i in idx if streams[i].keep_final]
        finals = dict(zip(kept, self.place.rows(self.states, kept), strict=True)) if kept else {}
        out: list[tuple[Stream, np.ndarray | None, StateRows | None, int, str | None]] = []
        for i in idx:
            stop = None
            if hits is not None and hits[i] and self.stops is not None:
                stop = self.stops.stop_of(i, int(hits[i]))
            rows = finals.get(i)
            logits = self.logits[i].copy() if rows is not None else None
            out.append((streams[i], logits, rows, int(self.rows.count[i]), stop))
        return out

    def _routes(self, new: list[Stream]) -> tuple[np.ndarray, np.ndarray]:
        """Sink index and id of each new row (once per joining stream, never per step)."""
        sink_of = np.full(len(new), -1, np.int32)
        rids = np.zeros(len(new), np.int64)
        for i, s in enumerate(new):
            if s.route is None:
                continue
            try:
                k = self.sinks.index(s.route.sink)  # a handful: one per worker
            except ValueError:
                k = len(self.sinks)
                self.sinks.append(s.route.sink)
            sink_of[i], rids[i] = k, s.route.rid
        return sink_of, rids

    def advance(self, logits: np.ndarray, states: Held) -> None:
        """The step's outputs become the next step's inputs (no copies)."""
        self.logits, self.states = logits, states

    def _changed(self) -> None:
        if not self.streams:  # (a worker that went away leaves no sink behind)
            self.sinks, self.sink_of, self.rids = [], np.zeros(0, np.int32), np.zeros(0, np.int64)
        routed = self.sink_of >= 0
        if not routed.any():
            self.local = None
        elif routed.all():
            self.local = ()
        else:
            self.local = tuple(np.flatnonzero(~routed).tolist())
        self._one_sink = len(self.sinks) == 1 and bool(routed.all())
        r = self.rows
        self.plain = all_plain(r.temp, r.top_k, r.top_p, self.logits.shape[-1])
        self.until_done = int((r.max - r.count).min()) if len(r.count) else 0
