"""Clients of the timeout matrix (tests/lab/timeouts.rs), run in the lab's
client namespace: python3 -c SCRIPT HOST MODE [ARGS...].

Each misbehaves in one way (never reads, goes quiet, sends half a preface,
announces a huge frame, trickles a head) or uploads at a steady pace, and
prints one JSON line per connection or stream set. Times are epoch seconds
(the test compares them with its own samples of the gateway); `ref` is when
the bound under test started to run for that client, `closed` when it saw the
gateway let go (connection closed or reset, or its streams reset). Every mode
gives up after LIMIT seconds.
"""
import fcntl, json, select, socket, struct, sys, termios, time

HOST, MODE, ARGS = sys.argv[1], sys.argv[2], sys.argv[3:]
PREFACE = b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY = 0, 1, 3, 4, 6, 7
END_STREAM, END_HEADERS, PADDED, PRIORITY = 0x1, 0x4, 0x8, 0x20
INITIAL_WINDOW_SIZE = 4
TCP_STATES = {1: 'established', 7: 'close', 8: 'close-wait', 4: 'fin-wait-1', 5: 'fin-wait-2',
              6: 'time-wait', 9: 'last-ack', 11: 'closing'}


def report(**fields):
    print(json.dumps(fields), flush=True)


def connect(rcvbuf=None):
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(5)
    s.connect((HOST, 80))
    return s


def frame(kind, flags, stream, payload=b''):
    return struct.pack('>I', len(payload))[1:] + bytes([kind, flags]) + struct.pack('>I', stream) + payload


def settings(*pairs):
    return frame(SETTINGS, 0, 0, b''.join(struct.pack('>HI', k, v) for k, v in pairs))


def literal(name, value):
    # A literal header field without indexing, new name, no Huffman.
    return b'\x00' + bytes([len(name)]) + name + bytes([len(value)]) + value


def request(stream, method, path, end_stream=True, extra=()):
    block = (literal(b':method', method) + literal(b':scheme', b'http') + literal(b':path', path.encode())
             + literal(b':authority', HOST.encode()))
    for name, value in extra:
        block += literal(name, value)
    return frame(HEADERS, END_HEADERS | (END_STREAM if end_stream else 0), stream, block)


# Enough HPACK to read a response's :status: the static table's statuses,
# and a literal value in plain or Huffman-coded digits (RFC 7541 appendix B).
STATIC_STATUS = {8: '200', 9: '204', 10: '206', 11: '304', 12: '400', 13: '404', 14: '500'}
HUFFMAN_DIGITS = {(5, 0x0): '0', (5, 0x1): '1', (5, 0x2): '2', (6, 0x19): '3', (6, 0x1a): '4',
                  (6, 0x1b): '5', (6, 0x1c): '6', (6, 0x1d): '7', (6, 0x1e): '8', (6, 0x1f): '9'}


def integer(data, at, prefix):
    mask = (1 << prefix) - 1
    value, at = data[at] & mask, at + 1
    if value < mask:
        return value, at
    shift = 0
    while True:
        byte, at = data[at], at + 1
        value += (byte & 0x7f) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def huffman_digits(data):
    out, code, bits = '', 0, 0
    for byte in data:
        for i in range(7, -1, -1):
            code, bits = (code << 1) | ((byte >> i) & 1), bits + 1
            if (bits, code) in HUFFMAN_DIGITS:
                out, code, bits = out + HUFFMAN_DIGITS[(bits, code)], 0, 0
    return out  # what is left over is the all-ones padding


def status_of(flags, payload):
    at = 0
    if flags & PADDED:
        payload = payload[1:len(payload) - payload[0]]
    if flags & PRIORITY:
        payload = payload[5:]
    while at < len(payload):
        first = payload[at]
        if first & 0x80:
            index, at = integer(payload, at, 7)
            return STATIC_STATUS.get(index, f'indexed-{index}')
        if first & 0xe0 == 0x20:  # dynamic table size update
            _, at = integer(payload, at, 5)
            continue
        index, at = integer(payload, at, 6 if first & 0x40 else 4)
        if index not in STATIC_STATUS:
            return f'field-{index}'
        huffman = payload[at] & 0x80
        length, at = integer(payload, at, 7)
        value = payload[at:at + length]
        return huffman_digits(value) if huffman else value.decode('latin-1')
    return None


class H2:
    """One HTTP/2 connection: frames in, SETTINGS acked, PINGs answered,
    nothing else sent unless asked (no WINDOW_UPDATE, ever)."""

    def __init__(self, sock, buffered=b''):
        self.s, self.buf = sock, buffered
        self.closed = self.goaway = self.goaway_code = None

    def send(self, data):
        try:
            self.s.sendall(data)
        except OSError:
            pass

    def frames(self, timeout):
        out = []
        if self.closed is None:
            ready, _, _ = select.select([self.s], [], [], timeout)
            if ready:
                try:
                    data = self.s.recv(1 << 20)
                except OSError:
                    data = b''
                if not data:
                    self.closed = time.time()
                self.buf += data
        while len(self.buf) >= 9:
            n = int.from_bytes(self.buf[:3], 'big')
            if len(self.buf) < 9 + n:
                break
            kind, flags = self.buf[3], self.buf[4]
            stream = int.from_bytes(self.buf[5:9], 'big') & 0x7fffffff
            payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
            at = time.time()
            if kind == SETTINGS and not flags & 1:
                self.send(frame(SETTINGS, 1, 0))
            elif kind == PING and not flags & 1:
                self.send(frame(PING, 1, 0, payload))
            elif kind == GOAWAY and self.goaway is None:
                self.goaway, self.goaway_code = at, int.from_bytes(payload[4:8], 'big')
            out.append((kind, flags, stream, payload, at))
        return out


def read_head(s, limit):
    """An HTTP/1.1 response head (and what followed it), or what came before
    the connection ended."""
    data, end = b'', time.time() + limit
    while b'\r\n\r\n' not in data and time.time() < end:
        ready, _, _ = select.select([s], [], [], 0.05)
        if ready:
            try:
                d = s.recv(65536)
            except OSError:
                d = b''
            if not d:
                break
            data += d
    head, _, rest = data.partition(b'\r\n\r\n')
    return head.decode('latin-1'), rest


def wait_closed(s, limit, arrivals=None):
    """Read until the peer closes or resets: (time, how, everything read);
    `arrivals` gets (time, bytes read so far) as they come."""
    data, end = b'', time.time() + limit
    while time.time() < end:
        ready, _, _ = select.select([s], [], [], 0.05)
        if not ready:
            continue
        try:
            d = s.recv(65536)
        except ConnectionResetError:
            return time.time(), 'reset', data
        except OSError as e:
            return time.time(), str(e), data
        if not d:
            return time.time(), 'fin', data
        data += d
        if arrivals is not None:
            arrivals.append((time.time(), len(data)))
    return None, None, data


def goaway_at(data, arrivals):
    """When the first GOAWAY frame in `data` (server frames) had arrived,
    and its error code."""
    at = 0
    while len(data) >= at + 9:
        n = int.from_bytes(data[at:at + 3], 'big')
        if data[at + 3] == GOAWAY and len(data) >= at + 9 + n:
            arrived = next(t for t, size in arrivals if size >= at + 9 + n)
            return arrived, int.from_bytes(data[at + 13:at + 17], 'big')
        at += 9 + n
    return None, None


def upgrade_request(path):
    # HTTP2-Settings: MAX_CONCURRENT_STREAMS=100, base64url.
    return (f'GET {path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: Upgrade, HTTP2-Settings\r\n'
            'Upgrade: h2c\r\nHTTP2-Settings: AAMAAABk\r\n\r\n').encode()


def h1_slow_reader(conns, path, limit):
    """GET a response larger than every buffer, never read it; watch the
    socket's queue (FIONREAD) stop growing and its TCP state leave
    ESTABLISHED."""
    limit, out = float(limit), []
    for _ in range(int(conns)):
        s = connect(rcvbuf=256 * 1024)
        s.sendall(f'GET {path} HTTP/1.1\r\nHost: h\r\n\r\n'.encode())
        now = time.time()
        out.append(dict(s=s, port=s.getsockname()[1], sent=now, ref=now, queued=0, status=None, closed=None,
                        state='established'))
    end = time.time() + limit
    while time.time() < end and any(c['closed'] is None for c in out):
        for c in out:
            if c['closed'] is not None:
                continue
            s = c['s']
            state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
            try:
                queued = struct.unpack('i', fcntl.ioctl(s.fileno(), termios.FIONREAD, b'\0' * 4))[0]
            except OSError:
                queued = c['queued']
            if queued != c['queued']:
                c['queued'], c['ref'] = queued, time.time()
            if c['status'] is None and queued >= 12:
                try:
                    c['status'] = s.recv(12, socket.MSG_PEEK)[9:12].decode('latin-1')
                except OSError:
                    pass
            if state != 1:
                c['closed'], c['state'] = time.time(), TCP_STATES.get(state, str(state))
        time.sleep(0.02)
    for i, c in enumerate(out):
        error = c['s'].getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        report(kind='h1-slow-reader', path=path, conn=i, port=c['port'], sent=c['sent'], ref=c['ref'], closed=c['closed'],
               state=c['state'], status=c['status'], queued=c['queued'], error=error)


def h2_slow_reader(streams, path, window, limit):
    """Open STREAMS streams for large responses and never grant window:
    `stream` announces INITIAL_WINDOW_SIZE=0, `connection` leaves the
    default 65,535 and never sends WINDOW_UPDATE (the connection window runs
    out). Each stream's `ref` is its last progress (head or data)."""
    limit = float(limit)
    s = connect()
    h = H2(s)
    initial = [(INITIAL_WINDOW_SIZE, 0)] if window == 'stream' else []
    h.send(PREFACE + settings(*initial))
    sent = time.time()
    st = {sid: dict(status=None, data=0, ref=sent, reset=None, code=None, ended=None)
          for sid in range(1, 2 * int(streams), 2)}
    h.send(b''.join(request(sid, b'GET', path) for sid in st))
    end = sent + limit

    def pending():
        return [v for v in st.values() if v['reset'] is None and v['ended'] is None]
    while time.time() < end and h.closed is None and pending():
        for kind, flags, sid, payload, at in h.frames(0.05):
            v = st.get(sid)
            if v is None:
                continue
            if kind == HEADERS and v['status'] is None:
                v['status'], v['ref'] = status_of(flags, payload), at
            elif kind == DATA and payload:
                v['data'] += len(payload)
                v['ref'] = at
            elif kind == RST_STREAM:
                v['reset'], v['code'] = at, int.from_bytes(payload[:4], 'big')
            if kind in (HEADERS, DATA) and flags & END_STREAM:
                v['ended'] = at
    # A stream is let go by its RST_STREAM or by the connection's end.
    released = [v['reset'] or h.closed for v in st.values()]
    waits = [r - v['ref'] for r, v in zip(released, st.values()) if r is not None]
    report(kind='h2-slow-reader', path=path, window=window, streams=len(st), sent=sent,
           ref=max(v['ref'] for v in st.values()),
           heads=sum(1 for v in st.values() if v['status'] is not None),
           statuses=sorted({str(v['status']) for v in st.values()}),
           data=sum(v['data'] for v in st.values()),
           ended=sum(1 for v in st.values() if v['ended'] is not None),
           reset=sum(1 for v in st.values() if v['reset'] is not None),
           codes=sorted({v['code'] for v in st.values() if v['code'] is not None}),
           released=sum(1 for r in released if r is not None),
           closed=max(released) if all(r is not None for r in released) else None,
           worst=max(waits) if waits else None, conn_closed=h.closed, goaway=h.goaway_code)


def h1_local_answer(path, length, limit):
    """A request the gateway answers itself, announcing a body never sent."""
    s = connect()
    s.sendall(f'POST {path} HTTP/1.1\r\nHost: h\r\nContent-Length: {length}\r\n\r\n'.encode())
    ref = time.time()
    closed, how, data = wait_closed(s, float(limit))
    report(kind='h1-local-answer', path=path, ref=ref, closed=closed, how=how,
           status=data[9:12].decode('latin-1'), response=data[:120].decode('latin-1'))


def h2_local_answer(path, length, limit):
    """The same over HTTP/2: HEADERS with content-length, no DATA, ever."""
    s = connect()
    h = H2(s)
    h.send(PREFACE + settings())
    h.send(request(1, b'POST', path, end_stream=False, extra=[(b'content-length', str(length).encode())]))
    ref = time.time()
    status = reset = code = None
    end = ref + float(limit)
    while time.time() < end and h.closed is None and reset is None:
        for kind, flags, sid, payload, at in h.frames(0.05):
            if sid == 1 and kind == HEADERS and status is None:
                status = status_of(flags, payload)
            elif sid == 1 and kind == RST_STREAM:
                reset, code = at, int.from_bytes(payload[:4], 'big')
    report(kind='h2-local-answer', path=path, ref=ref, status=status, reset=reset, code=code,
           closed=reset or h.closed, conn_closed=h.closed, goaway=h.goaway_code)


def h1_idle(limit):
    """One keep-alive request, its whole response read, then silence."""
    s = connect()
    s.sendall(b'GET /idle HTTP/1.1\r\nHost: h\r\n\r\n')
    head, rest = read_head(s, 5)
    length = next((int(l.split(':')[1]) for l in head.split('\r\n') if l.lower().startswith('content-length:')), 0)
    while len(rest) < length:
        d = s.recv(65536)
        if not d:
            break
        rest += d
    ref = time.time()
    closed, how, _ = wait_closed(s, float(limit))
    report(kind='h1-idle', ref=ref, closed=closed, how=how, status=head[9:12])


def h2_idle(how, limit):
    """An HTTP/2 connection with no stream open: `none` never opens one,
    `one` makes a request first, `upgrade` is an `Upgrade: h2c` whose request
    was answered on stream 1. `ref` is when its last stream ended."""
    s = connect()
    status = None
    if how == 'upgrade':
        s.sendall(upgrade_request('/idle-upgraded'))
        head, rest = read_head(s, 5)
        h = H2(s, rest)
        h.send(PREFACE + settings())
        status = head[9:12]
        open_streams = {1}
    else:
        h = H2(s)
        h.send(PREFACE + settings())
        open_streams = set()
        if how == 'one':
            h.send(request(1, b'GET', '/idle-h2'))
            open_streams = {1}
    ref = time.time()
    end = ref + float(limit)
    while time.time() < end and h.closed is None:
        for kind, flags, sid, payload, at in h.frames(0.05):
            if kind == HEADERS and sid == 1 and how == 'one':
                status = status_of(flags, payload)
            if sid in open_streams and (kind == RST_STREAM or kind in (HEADERS, DATA) and flags & END_STREAM):
                open_streams.discard(sid)
                ref = at
    report(kind='h2-idle', how=how, ref=ref, goaway=h.goaway, code=h.goaway_code, closed=h.closed,
           status=status, streams_left=len(open_streams))


def preface(how, limit):
    """`partial`: half the HTTP/2 preface; `no-settings`: the preface and no
    SETTINGS; `upgrade-silent`: an `Upgrade: h2c` answered with 101, then
    nothing. `ref` is the connection's start (the 101 for the upgrade)."""
    s = connect()
    ref = time.time()
    head = ''
    if how == 'partial':
        s.sendall(b'PRI * HTTP/2.0\r\n')
    elif how == 'no-settings':
        s.sendall(PREFACE)
    else:
        s.sendall(upgrade_request('/silent'))
        head, _ = read_head(s, 5)
        ref = time.time()
    arrivals = []
    closed, why, data = wait_closed(s, float(limit), arrivals)
    goaway, code = goaway_at(data, arrivals) if how == 'no-settings' else (None, None)
    report(kind='preface', how=how, ref=ref, closed=closed, why=why, head=head[:12],
           http1=data.startswith(b'HTTP/1.'), received=data[:48].hex(), goaway=goaway, code=code)


def oversized(how, limit):
    """The first frame after the preface is a SETTINGS header announcing
    16 MiB - 1 (`upgrade`: after an `Upgrade: h2c`'s 101; `prior`: prior
    knowledge) or not SETTINGS at all (`headers`). Then up to 16 MiB of
    junk: all of it as fast as it goes, with a 1 s pause at 12 MiB so that a
    gateway buffering it is seen holding it."""
    s = connect()
    head = ''
    if how == 'upgrade':
        s.sendall(upgrade_request('/oversized'))
        head, _ = read_head(s, 5)
    if how == 'headers':
        first = request(1, b'GET', '/first-frame-not-settings')
    else:
        first = struct.pack('>I', (1 << 24) - 1)[1:] + bytes([SETTINGS, 0]) + b'\0\0\0\0'
    s.sendall(PREFACE + first)
    ref = time.time()
    s.setblocking(False)
    junk, sent, closed, why = b'\0' * 65536, 0, None, None
    end, paused = ref + float(limit), None
    while time.time() < end and closed is None:
        want_write = sent < (16 << 20) - 65536 and (paused is None or time.time() > paused)
        if sent >= 12 << 20 and paused is None:
            paused, want_write = time.time() + 1.0, False
        ready_r, ready_w, _ = select.select([s], [s] if want_write else [], [], 0.02)
        if ready_r:
            try:
                d = s.recv(65536)
                if not d:
                    closed, why = time.time(), 'fin'
            except BlockingIOError:
                pass
            except OSError as e:
                closed, why = time.time(), type(e).__name__
        if ready_w and closed is None:
            try:
                sent += s.send(junk)
            except BlockingIOError:
                pass
            except OSError as e:
                closed, why = time.time(), type(e).__name__
    report(kind='oversized', how=how, head=head[:12], ref=ref, closed=closed, why=why, sent=sent)


def slowloris(limit):
    """A request head, one byte every 0.5 s, never finished."""
    s = connect()
    text = b'GET /slow HTTP/1.1\r\nHost: h\r\nX-Slow: ' + b'a' * 1000
    ref, sent = time.time(), 0
    end = ref + float(limit)
    closed = why = None
    data = b''
    while time.time() < end and closed is None:
        try:
            s.send(text[sent:sent + 1])
            sent += 1
        except OSError as e:
            closed, why = time.time(), type(e).__name__
            break
        stop = min(time.time() + 0.5, end)
        while time.time() < stop and closed is None:
            ready, _, _ = select.select([s], [], [], max(0.0, stop - time.time()))
            if ready:
                try:
                    d = s.recv(65536)
                except OSError as e:
                    closed, why = time.time(), type(e).__name__
                    break
                if not d:
                    closed, why = time.time(), 'fin'
                data += d
    report(kind='slowloris', ref=ref, closed=closed, why=why, sent=sent, status=data[9:12].decode('latin-1'))


MODES = {'h1-slow-reader': h1_slow_reader, 'h2-slow-reader': h2_slow_reader,
         'h1-local-answer': h1_local_answer, 'h2-local-answer': h2_local_answer,
         'h1-idle': h1_idle, 'h2-idle': h2_idle, 'preface': preface, 'oversized': oversized,
         'slowloris': slowloris}
MODES[MODE](*ARGS)
