"""A local Binance spot stand-in on 127.0.0.1 that replays a recorded websocket capture.

It speaks just enough of Binance for an unmodified `ccxt.pro.binance()`:
- websocket `/stream/ws/<n>` (ccxt opens one connection per stream index and tells spot from swap by
  '/stream' in the URL): answers `{"method":"SUBSCRIBE","params":[...],"id":n}` with `{"result":null,"id":n}`
  and then pushes the raw payload (`data`) of every replayed message whose stream the connection subscribed;
- HTTP `GET /api/v3/depth?symbol=BTCUSDT&limit=N`: the REST depth snapshot *as of the replay cursor*: the recorded
  snapshot with every depth diff replayed so far applied (Binance's REST book is "now", so a resync after a
  disconnect or a gap needs a current snapshot, not the 23:54 one);
- `<sym>@kline_1m`: the capture has no kline stream, so klines are aggregated from the recorded trades the way
  Binance does (open/high/low/close/volume per minute of trade time, an update at most every 2 s of event time,
  a final `x=true` update when the minute ends).

The replay is driven by the test: `await server.play(n)` pushes the next `n` messages as fast as the sockets
take them. Fault injection: `mute(stream)` (the stream goes silent), `drop_next(stream)` (one message is lost:
a sequence gap), `disconnect_all()` (server-side close of every websocket).

The user data stream, as Binance spot serves it to ccxt 4.5 (the websocket API): websocket `/ws-api/v3` takes a
`userDataStream.subscribe.signature` request (apiKey, timestamp, HMAC-SHA256 signature of the sorted query, checked
against `API_KEY` / `SECRET`), answers with a `subscriptionId`, then carries `{"subscriptionId", "event"}` frames:
`push_user(event)` sends one. `execution_reports` turns a venue's ccxt order structure into the `executionReport`
events Binance would have sent for it.
"""
from __future__ import annotations
import asyncio, gzip, hashlib, hmac, json
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path

from aiohttp import web, WSMsgType

CAPTURE = ('binance_spot_btcusdt_20240808.gz', 'binance_spot_btcusdt_20240809.gz')


@dataclass(frozen=True)
class Message:
    local_ns: int
    stream: str
    data: dict
    text: str  # the payload as sent


@dataclass(frozen=True)
class Capture:
    snapshot: dict            # the REST depth snapshot line
    messages: tuple[Message, ...]  # every stream message, file order


@lru_cache(maxsize=2)
def load_capture(files:tuple[str, ...]=CAPTURE) -> Capture:
    "The recorded Binance capture (bundled sample): the REST snapshot and the stream messages in file order."
    from trader.data import sample_path
    snapshot, messages = None, []
    for name in files:
        with gzip.open(sample_path('ticks', name), 'rt') as fh:
            for line in fh:
                ts, raw = line.split(' ', 1)
                d = json.loads(raw)
                if 'stream' not in d: snapshot = d; continue
                messages.append(Message(int(ts), d['stream'], d['data'], json.dumps(d['data'], separators=(',', ':'))))
    if snapshot is None: raise ValueError(f"{files}: no REST depth snapshot line")
    return Capture(snapshot, tuple(messages))


class _Book:
    "The venue's own book: the recorded snapshot plus every replayed diff (for the REST endpoint)."
    def __init__(self, snapshot:dict):
        self.last_update_id = snapshot['lastUpdateId']
        self.sides = {k: {Decimal(p): q for p, q in snapshot[k]} for k in ('bids', 'asks')}

    def apply(self, diff:dict):
        if diff['u'] <= self.last_update_id: return
        if diff['U'] > self.last_update_id + 1:
            raise RuntimeError(f"replay book gap: U={diff['U']} after {self.last_update_id}")
        for key, side in (('b', 'bids'), ('a', 'asks')):
            for p, q in diff[key]:
                if Decimal(q) == 0: self.sides[side].pop(Decimal(p), None)
                else: self.sides[side][Decimal(p)] = q
        self.last_update_id = diff['u']

    def snapshot(self, limit:int) -> dict:
        bids = sorted(self.sides['bids'].items(), reverse=True)[:limit]
        asks = sorted(self.sides['asks'].items())[:limit]
        return {'lastUpdateId': self.last_update_id,
                'bids': [[f'{p:f}', q] for p, q in bids], 'asks': [[f'{p:f}', q] for p, q in asks]}


class _Klines:
    "Binance-style 1m klines aggregated from trades."
    def __init__(self, symbol_id:str, push_every_ms:int=2000):
        self.symbol_id, self.push_every_ms = symbol_id, push_every_ms
        self.k, self.last_push = None, None

    def _msg(self, E:int, closed:bool) -> str:
        k = self.k
        body = {'t': k['t'], 'T': k['t'] + 59_999, 's': self.symbol_id, 'i': '1m', 'f': k['f'], 'L': k['L'],
                'o': k['o'], 'c': k['c'], 'h': str(k['h']), 'l': str(k['l']), 'v': str(k['v']), 'n': k['n'],
                'x': closed, 'q': '0', 'V': '0', 'Q': '0', 'B': '0'}
        return json.dumps({'e': 'kline', 'E': E, 's': self.symbol_id, 'k': body}, separators=(',', ':'))

    def on_trade(self, t:dict) -> list[str]:
        "Kline messages this trade causes."
        out, start, p, q = [], t['T'] // 60_000 * 60_000, Decimal(t['p']), Decimal(t['q'])
        if self.k is not None and start > self.k['t']:
            out.append(self._msg(self.k['t'] + 60_000, True)); self.k = None
        if self.k is None:
            self.k = {'t': start, 'f': t['t'], 'L': t['t'], 'o': t['p'], 'c': t['p'], 'h': p, 'l': p, 'v': Decimal(0), 'n': 0}
        k = self.k
        k.update(L=t['t'], c=t['p'], h=max(k['h'], p), l=min(k['l'], p), v=k['v'] + q, n=k['n'] + 1)
        if self.last_push is None or t['E'] - self.last_push >= self.push_every_ms:
            out.append(self._msg(t['E'], False)); self.last_push = t['E']
        return out


class BinanceReplayServer:
    "Replays a recorded Binance spot capture to ccxt.pro over websocket + REST on 127.0.0.1."
    def __init__(self, capture:Capture|None=None, symbol_id:str='BTCUSDT'):
        self.capture = capture or load_capture()
        self.symbol_id, self.lower = symbol_id, symbol_id.lower()
        self.book = _Book(self.capture.snapshot)
        self.klines = _Klines(symbol_id)
        self.cursor = 0
        self.subscriptions: dict[web.WebSocketResponse, set[str]] = {}
        self.muted: set[str] = set()
        self._drop: dict[str, int] = {}
        self.sent = {}                   # stream -> messages pushed
        self.snapshot_requests: list[int] = []   # lastUpdateId of each REST snapshot served
        self.subscribe_requests: list[tuple[str, ...]] = []
        self.connections = 0
        self.user_streams: dict[web.WebSocketResponse, int] = {}   # subscribed user data connections -> subscriptionId
        self.logins: list[bool] = []                               # each subscribe request: whether its signature was valid
        self._transports = {}
        self._changed = asyncio.Event()
        self._runner = None
        self.port = None

    # --- lifecycle
    async def start(self) -> int:
        app = web.Application()
        app.router.add_get('/api/v3/depth', self._depth)
        app.router.add_get('/stream/ws/{index}', self._websocket)
        app.router.add_get('/ws-api/v3', self._ws_api)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, '127.0.0.1', 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self):
        await self.disconnect_all()
        if self._runner: await self._runner.cleanup()

    async def __aenter__(self): await self.start(); return self
    async def __aexit__(self, *exc): await self.stop()

    @property
    def ws_url(self) -> str: return f'ws://127.0.0.1:{self.port}/stream/ws'
    @property
    def rest_url(self) -> str: return f'http://127.0.0.1:{self.port}/api/v3'

    def point(self, exchange):
        "Point an unmodified ccxt.pro binance at this server (URLs only) and give it the bundled markets."
        from trader.data import load_markets
        exchange.urls['api']['ws']['spot'] = self.ws_url
        exchange.urls['api']['public'] = self.rest_url
        exchange.urls['api']['ws']['ws-api']['spot'] = f'ws://127.0.0.1:{self.port}/ws-api/v3'
        # the bundled markets predate some keys ccxt 4.5.90 reads ('linear', 'inverse', 'settle', ...):
        # complete them with ccxt's own empty market structure
        markets = {s: {**exchange.safe_market_structure(), **m} for s, m in load_markets('binance').items()}
        exchange.set_markets(markets)
        return exchange

    # --- HTTP
    async def _depth(self, request:web.Request) -> web.Response:
        if request.query.get('symbol') != self.symbol_id:
            return web.json_response({'code': -1121, 'msg': 'Invalid symbol.'}, status=400)
        snap = self.book.snapshot(int(request.query.get('limit', 100)))
        self.snapshot_requests.append(snap['lastUpdateId'])
        return web.json_response(snap)

    # --- websocket
    async def _websocket(self, request:web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self.subscriptions[ws] = set(); self.connections += 1
        self._transports[ws] = request.transport
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT: continue
                req = json.loads(msg.data)
                if req.get('method') == 'SUBSCRIBE':
                    self.subscriptions[ws].update(req['params'])
                    self.subscribe_requests.append(tuple(req['params']))
                elif req.get('method') == 'UNSUBSCRIBE':
                    self.subscriptions[ws].difference_update(req['params'])
                await ws.send_str(json.dumps({'result': None, 'id': req.get('id')}))
                self._changed.set()
        finally:
            self.subscriptions.pop(ws, None); self._transports.pop(ws, None); self._changed.set()
        return ws

    async def _ws_api(self, request:web.Request) -> web.WebSocketResponse:
        "Binance's websocket API, the user data stream part: a signed subscribe, then pushed events."
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        self._transports[ws] = request.transport; self.connections += 1
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT: continue
                req = json.loads(msg.data)
                if req.get('method') != 'userDataStream.subscribe.signature':
                    await ws.send_str(json.dumps({'id': req.get('id'), 'status': 400, 'error': {'code': -1100, 'msg': f"Unknown method {req.get('method')}."}}))
                    continue
                self.logins.append(_signed(req.get('params') or {}))
                if not self.logins[-1]:
                    await ws.send_str(json.dumps({'id': req.get('id'), 'status': 401, 'error': {'code': -1022, 'msg': 'Signature for this request is not valid.'}}))
                    continue
                sid = self.user_streams[ws] = len(self.logins) - 1
                self.subscriptions[ws] = {USER_DATA}
                await ws.send_str(json.dumps({'id': req['id'], 'status': 200, 'result': {'subscriptionId': sid}}))
                self._changed.set()
        finally:
            self.user_streams.pop(ws, None); self.subscriptions.pop(ws, None); self._transports.pop(ws, None); self._changed.set()
        return ws

    async def push_user(self, event:dict):
        "Send one user data event (an `executionReport`, say) to every subscribed user stream."
        for ws, sid in list(self.user_streams.items()):
            if not ws.closed: await ws.send_str(json.dumps({'subscriptionId': sid, 'event': event}, separators=(',', ':')))

    def subscribed(self) -> set[str]:
        "Every stream some open connection subscribed."
        return set().union(*self.subscriptions.values()) if self.subscriptions else set()

    async def wait_subscribed(self, streams:set[str], timeout:float=10.0):
        "Wait until every stream in `streams` has a subscriber."
        async def wait():
            while not set(streams) <= self.subscribed():
                self._changed.clear(); await self._changed.wait()
        await asyncio.wait_for(wait(), timeout)

    async def disconnect_all(self, code:int=1001, abrupt:bool=False):
        "Server-side close of every websocket: a close frame (Binance sends 1001 'going away'), or `abrupt`ly drop TCP."
        for ws in list(self.subscriptions):
            self.subscriptions.pop(ws, None)
            transport = self._transports.pop(ws, None)
            if abrupt and transport is not None: transport.abort()
            else: await ws.close(code=code, message=b'going away')

    # --- replay
    def mute(self, stream:str): self.muted.add(stream)
    def unmute(self, stream:str): self.muted.discard(stream)
    def drop_next(self, stream:str, n:int=1): self._drop[stream] = self._drop.get(stream, 0) + n

    @property
    def done(self) -> bool: return self.cursor >= len(self.capture.messages)

    async def _push(self, stream:str, text:str):
        if stream in self.muted: return
        if self._drop.get(stream):
            self._drop[stream] -= 1; return
        for ws, streams in list(self.subscriptions.items()):
            if stream in streams and not ws.closed:
                try: await ws.send_str(text)
                except ConnectionError: continue
                self.sent[stream] = self.sent.get(stream, 0) + 1

    async def play(self, n:int|None=None, yield_every:int=200) -> list[Message]:
        "Replay the next `n` recorded messages (all that remain if None); returns them."
        msgs = self.capture.messages
        end = len(msgs) if n is None else min(len(msgs), self.cursor + n)
        kline_stream = f'{self.lower}@kline_1m'
        played = []
        for i in range(self.cursor, end):
            m = msgs[i]
            if m.stream.endswith('@depth@100ms'): self.book.apply(m.data)
            await self._push(m.stream, m.text)
            if m.stream.endswith('@trade'):
                for k in self.klines.on_trade(m.data): await self._push(kline_stream, k)
            played.append(m)
            self.cursor = i + 1
            if (i + 1) % yield_every == 0: await asyncio.sleep(0)
        return played

    async def play_until(self, pred, limit:int|None=None) -> list[Message]:
        "Replay messages up to and including the first one for which `pred(message)` is true."
        out = []
        while not self.done and (limit is None or len(out) < limit):
            m = (await self.play(1))[0]; out.append(m)
            if pred(m): break
        return out


def raw_capture(files:tuple[str, ...]=CAPTURE) -> tuple[dict, list[tuple[str, dict]]]:
    "(snapshot, [(stream, data)]) straight from the gz files, in file order: the expectation side, read with json alone."
    from trader.data import sample_path
    snapshot, msgs = None, []
    for name in files:
        with gzip.open(sample_path('ticks', name), 'rt') as fh:
            for line in fh:
                d = json.loads(line.split(' ', 1)[1])
                if 'stream' in d: msgs.append((d['stream'], d['data']))
                else: snapshot = d
    return snapshot, msgs

async def until(pred, timeout:float=15.0, what:str='condition'):
    "Poll `pred` until true; fail with `what` after `timeout` seconds."
    loop = asyncio.get_running_loop(); end = loop.time() + timeout
    while not pred():
        if loop.time() > end: raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


# --- the user data stream -----------------------------------------------------------------------------------------
API_KEY, SECRET, USER_DATA = 'replay-api-key', 'replay-secret', 'userData'

def _signed(params:dict) -> bool:
    "Binance's check: the apiKey is ours and `signature` is the HMAC-SHA256 of the other params, sorted, as `k=v&...`."
    p = dict(params); sig = p.pop('signature', None)
    query = '&'.join(f'{k}={v}' for k, v in sorted(p.items()))
    return p.get('apiKey') == API_KEY and sig == hmac.new(SECRET.encode(), query.encode(), hashlib.sha256).hexdigest()

def _dec(x) -> str: return f'{Decimal(str(x)):.8f}'

class ExecutionReports:
    "Binance spot `executionReport` events for a venue's orders (ccxt order structures): NEW, one TRADE per fill, CANCELED / EXPIRED."
    def __init__(self, symbol_id:str='BTCUSDT'):
        self.symbol_id, self.sent = symbol_id, {}   # order id -> trade ids reported

    def __call__(self, order:dict) -> list[dict]:
        "The events this state of `order` adds to what was sent for it before."
        out, oid = [], order['id']
        if oid not in self.sent: self.sent[oid] = set(); out.append(self._event(order, 'NEW', 'NEW', order['timestamp']))
        cum_q = sum(Decimal(str(t['amount'])) for t in order['trades'] if t['id'] in self.sent[oid])
        cum_quote = sum(Decimal(str(t['cost'])) for t in order['trades'] if t['id'] in self.sent[oid])
        for t in order['trades']:
            if t['id'] in self.sent[oid]: continue
            self.sent[oid].add(t['id'])
            cum_q += Decimal(str(t['amount'])); cum_quote += Decimal(str(t['cost']))
            done = cum_q >= Decimal(str(order['amount']))
            out.append(self._event(order, 'TRADE', 'FILLED' if done else 'PARTIALLY_FILLED', t['timestamp'],
                                   l=_dec(t['amount']), L=_dec(t['price']), z=_dec(cum_q), Z=_dec(cum_quote), n=_dec(t['fee']['cost']),
                                   N=t['fee']['currency'], t=int(str(t['id']).lstrip('T')), m=t['takerOrMaker'] == 'maker'))
        if order['status'] in ('canceled', 'expired'):
            out.append(self._event(order, order['status'].upper(), order['status'].upper(), order['lastUpdateTimestamp'], z=_dec(cum_q), Z=_dec(cum_quote)))
        return out

    def _event(self, order:dict, x:str, X:str, T:int, **kw) -> dict:
        e = {'e': 'executionReport', 'E': T, 's': self.symbol_id, 'c': order['clientOrderId'], 'S': order['side'].upper(),
             'o': order['type'].upper(), 'f': order.get('timeInForce') or 'GTC', 'q': _dec(order['amount']), 'p': _dec(order['price'] or 0),
             'P': '0.00000000', 'F': '0.00000000', 'g': -1, 'C': '', 'x': x, 'X': X, 'r': 'NONE', 'i': order['id'],
             'l': '0.00000000', 'z': '0.00000000', 'L': '0.00000000', 'n': '0', 'N': None, 'T': T, 't': -1, 'I': 0,
             'w': X == 'NEW', 'm': False, 'M': False, 'O': order['timestamp'], 'Z': '0.00000000', 'Y': '0.00000000', 'Q': '0.00000000',
             'W': order['timestamp'], 'V': 'EXPIRE_MAKER'}
        e.update(kw)
        if x == 'TRADE': e['Y'] = _dec(Decimal(kw['l']) * Decimal(kw['L']))
        return e
