/* The UDP relay's fast path below Python (relayd.udp.fastpath drives it).
 *
 * Relay.step() reads the socket with recvmmsg(2) and forwards, with one
 * sendmmsg(2) per batch, every datagram that is a plain seed-001 `relay`
 * packet from an address in `sources` to a name in `targets` (two dicts the
 * Python side fills and clears), within the relay's size and per-IP rate
 * limits, and without a byte budget to charge (a proven sender, or a
 * relayed_packet within the slack).  It returns the first datagram it does
 * not forward, as (bytes, (host, port)), for Python to handle exactly as
 * without this module, after sending what it forwarded before it; None once
 * the socket is drained (or after MAX_BATCHES reads: the reactor's turn).
 * Given the reactor's own epoll descriptor and a deadline (its next timer),
 * a drained socket is waited for, with the GIL released, for as long as
 * nothing else the reactor watches is ready and the deadline has not come:
 * the reactor would sleep there anyway, and a datagram arriving meanwhile
 * costs no pass through it.
 *
 * The JSON check accepts a subset of what the Python relay path
 * (relayd.udp.packets.relay_fields) accepts: any doubt returns the datagram
 * to Python.  Every read stays within the datagram's length.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define BATCH 64          /* datagrams per recvmmsg and per sendmmsg */
#define MAX_BATCHES 32    /* recvmmsg calls per doRead */
#define MAX_DEPTH 32      /* nesting handed to Python beyond this */
#define KEY_MAX 19        /* family, port, IPv6 address */
#define NAME_LIMIT 64     /* characters in a target (protocol.NAME_LIMIT) */

/* --- JSON ---------------------------------------------------------------- */

typedef struct {
    const unsigned char *p, *end;
    int depth;
} scan_t;

static void
skip_ws(scan_t *s)
{
    while (s->p < s->end && (*s->p == ' ' || *s->p == '\t' || *s->p == '\n' || *s->p == '\r'))
        s->p++;
}

static int
hex4(const unsigned char *p, const unsigned char *end, unsigned *out)
{
    unsigned v = 0;
    if (end - p < 4)
        return -1;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9')
            v |= c - '0';
        else if (c >= 'a' && c <= 'f')
            v |= c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            v |= c - 'A' + 10;
        else
            return -1;
    }
    *out = v;
    return 0;
}

/* Length of the strict UTF-8 sequence at p (not ASCII), or -1. */
static int
utf8_char(const unsigned char *p, const unsigned char *end)
{
    unsigned c = p[0];
    Py_ssize_t room = end - p;
    if (c >= 0xC2 && c <= 0xDF)
        return room >= 2 && (p[1] & 0xC0) == 0x80 ? 2 : -1;
    if (c >= 0xE0 && c <= 0xEF) {
        if (room < 3 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80)
            return -1;
        if ((c == 0xE0 && p[1] < 0xA0) || (c == 0xED && p[1] >= 0xA0))
            return -1;            /* overlong; surrogate */
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (room < 4 || (p[1] & 0xC0) != 0x80 || (p[2] & 0xC0) != 0x80 || (p[3] & 0xC0) != 0x80)
            return -1;
        if ((c == 0xF0 && p[1] < 0x90) || (c == 0xF4 && p[1] >= 0x90))
            return -1;            /* overlong; above U+10FFFF */
        return 4;
    }
    return -1;
}

/* A string at s->p (its opening quote); *escaped is set when it holds a backslash.
 * Lone surrogate escapes are refused. */
static int
scan_string(scan_t *s, int *escaped)
{
    const unsigned char *p = s->p + 1, *end = s->end;
    *escaped = 0;
    while (p < end) {
        unsigned c = *p;
        if (c == '"') {
            s->p = p + 1;
            return 0;
        }
        if (c < 0x20)
            return -1;
        if (c < 0x80 && c != '\\') {
            p++;
            continue;
        }
        if (c >= 0x80) {
            int n = utf8_char(p, end);
            if (n < 0)
                return -1;
            p += n;
            continue;
        }
        *escaped = 1;
        if (++p >= end)
            return -1;
        c = *p;
        if (c == 'u') {
            unsigned v, w;
            if (hex4(p + 1, end, &v))
                return -1;
            p += 5;
            if (v >= 0xDC00 && v <= 0xDFFF)
                return -1;
            if (v >= 0xD800 && v <= 0xDBFF) {
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, end, &w)
                        || w < 0xDC00 || w > 0xDFFF)
                    return -1;
                p += 6;
            }
            continue;
        }
        if (c != '"' && c != '\\' && c != '/' && c != 'b' && c != 'f' && c != 'n'
                && c != 'r' && c != 't')
            return -1;
        p++;
    }
    return -1;
}

static int
scan_digits(scan_t *s)
{
    const unsigned char *start = s->p;
    while (s->p < s->end && *s->p >= '0' && *s->p <= '9')
        s->p++;
    return s->p > start ? 0 : -1;
}

static int
scan_number(scan_t *s)
{
    if (s->p < s->end && *s->p == '-')
        s->p++;
    if (s->p < s->end && *s->p == '0')
        s->p++;
    else if (s->p >= s->end || *s->p < '1' || *s->p > '9' || scan_digits(s))
        return -1;
    if (s->p < s->end && *s->p == '.') {
        s->p++;
        if (scan_digits(s))
            return -1;
    }
    if (s->p < s->end && (*s->p == 'e' || *s->p == 'E')) {
        s->p++;
        if (s->p < s->end && (*s->p == '+' || *s->p == '-'))
            s->p++;
        if (scan_digits(s))
            return -1;
    }
    return 0;
}

static int
scan_literal(scan_t *s, const char *word, Py_ssize_t n)
{
    if (s->end - s->p < n || memcmp(s->p, word, n))
        return -1;
    s->p += n;
    return 0;
}

static int scan_value(scan_t *s);

/* An object or array at s->p, closed by `close`. */
static int
scan_container(scan_t *s, unsigned char close)
{
    int escaped;
    if (++s->depth > MAX_DEPTH)
        return -1;
    s->p++;
    skip_ws(s);
    if (s->p < s->end && *s->p == close) {
        s->p++;
        s->depth--;
        return 0;
    }
    for (;;) {
        if (close == '}') {
            if (s->p >= s->end || *s->p != '"' || scan_string(s, &escaped))
                return -1;
            skip_ws(s);
            if (s->p >= s->end || *s->p != ':')
                return -1;
            s->p++;
            skip_ws(s);
        }
        if (scan_value(s))
            return -1;
        skip_ws(s);
        if (s->p >= s->end)
            return -1;
        if (*s->p == ',') {
            s->p++;
            skip_ws(s);
            continue;
        }
        if (*s->p != close)
            return -1;
        s->p++;
        s->depth--;
        return 0;
    }
}

static int
scan_value(scan_t *s)
{
    int escaped;
    if (s->p >= s->end)
        return -1;
    switch (*s->p) {
    case '"':
        return scan_string(s, &escaped);
    case '{':
        return scan_container(s, '}');
    case '[':
        return scan_container(s, ']');
    case 't':
        return scan_literal(s, "true", 4);
    case 'f':
        return scan_literal(s, "false", 5);
    case 'n':
        return scan_literal(s, "null", 4);
    default:
        return scan_number(s);
    }
}

typedef struct {
    const unsigned char *target, *payload;
    Py_ssize_t target_len, payload_len;
} relay_t;

/* Characters in valid UTF-8. */
static Py_ssize_t
characters(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t count = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        count += (p[i] & 0xC0) != 0x80;
    return count;
}

#define IS_KEY(k, n, word) ((n) == (Py_ssize_t)sizeof(word) - 1 && !memcmp((k), (word), (n)))

/* A `relay` packet: one object whose keys carry no escapes, with "type":
 * "relay", an unescaped non-empty string "target" and a "payload", each
 * once, and no "cookie"; 0 and the target's and payload's bytes, or -1. */
static int
parse_relay(const unsigned char *data, Py_ssize_t len, relay_t *out)
{
    scan_t s = {data, data + len, 1};
    int escaped, seen_type = 0, seen_target = 0, seen_payload = 0;
    skip_ws(&s);
    if (s.p >= s.end || *s.p != '{')
        return -1;
    s.p++;
    skip_ws(&s);
    for (;;) {
        const unsigned char *key = s.p + 1, *value;
        Py_ssize_t key_len;
        if (s.p >= s.end || *s.p != '"' || scan_string(&s, &escaped) || escaped)
            return -1;
        key_len = s.p - 1 - key;
        skip_ws(&s);
        if (s.p >= s.end || *s.p != ':')
            return -1;
        s.p++;
        skip_ws(&s);
        value = s.p;
        if (IS_KEY(key, key_len, "target")) {
            if (seen_target++ || s.p >= s.end || *s.p != '"' || scan_string(&s, &escaped)
                    || escaped || s.p - value < 3)
                return -1;
            out->target = value + 1;
            out->target_len = s.p - value - 2;
            if (characters(out->target, out->target_len) > NAME_LIMIT)
                return -1;
        } else {
            if (scan_value(&s))
                return -1;
            if (IS_KEY(key, key_len, "type")) {
                if (seen_type++ || s.p - value != 7 || memcmp(value, "\"relay\"", 7))
                    return -1;
            } else if (IS_KEY(key, key_len, "payload")) {
                if (seen_payload++)
                    return -1;
                out->payload = value;
                out->payload_len = s.p - value;
            } else if (IS_KEY(key, key_len, "cookie")) {
                return -1;
            }
        }
        skip_ws(&s);
        if (s.p < s.end && *s.p == ',') {
            s.p++;
            skip_ws(&s);
            continue;
        }
        if (s.p >= s.end || *s.p != '}')
            return -1;
        s.p++;
        break;
    }
    skip_ws(&s);
    return s.p == s.end && seen_type && seen_target && seen_payload ? 0 : -1;
}

static PyObject *
relay_fields(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer view;
    relay_t r;
    PyObject *result = NULL;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    if (parse_relay(view.buf, view.len, &r) == 0)
        result = Py_BuildValue("(y#y#)", r.target, r.target_len, r.payload, r.payload_len);
    else
        result = Py_NewRef(Py_None);
    PyBuffer_Release(&view);
    return result;
}

/* --- addresses ------------------------------------------------------------ */

/* The key both sides use for an address: family, port (big-endian), address. */
static Py_ssize_t
address_key(const struct sockaddr_storage *sa, unsigned char *key)
{
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        key[0] = AF_INET;
        memcpy(key + 1, &in->sin_port, 2);
        memcpy(key + 3, &in->sin_addr, 4);
        return 7;
    }
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        key[0] = AF_INET6;
        memcpy(key + 1, &in6->sin6_port, 2);
        memcpy(key + 3, &in6->sin6_addr, 16);
        return 19;
    }
    return -1;
}

static int
key_address(PyObject *key, struct sockaddr_storage *sa, socklen_t *len)
{
    const unsigned char *k = (const unsigned char *)PyBytes_AS_STRING(key);
    Py_ssize_t n = PyBytes_GET_SIZE(key);
    memset(sa, 0, sizeof(*sa));
    if (n == 7 && k[0] == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)sa;
        in->sin_family = AF_INET;
        memcpy(&in->sin_port, k + 1, 2);
        memcpy(&in->sin_addr, k + 3, 4);
        *len = sizeof(*in);
        return 0;
    }
    if (n == 19 && k[0] == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;
        in6->sin6_family = AF_INET6;
        memcpy(&in6->sin6_port, k + 1, 2);
        memcpy(&in6->sin6_addr, k + 3, 16);
        *len = sizeof(*in6);
        return 0;
    }
    return -1;
}

/* (host, port) as Twisted's udp.Port gives it (flow and scope cut). */
static PyObject *
address_tuple(const struct sockaddr_storage *sa)
{
    char host[INET6_ADDRSTRLEN];
    const void *addr;
    int port;
    if (sa->ss_family == AF_INET) {
        addr = &((const struct sockaddr_in *)sa)->sin_addr;
        port = ntohs(((const struct sockaddr_in *)sa)->sin_port);
    } else if (sa->ss_family == AF_INET6) {
        addr = &((const struct sockaddr_in6 *)sa)->sin6_addr;
        port = ntohs(((const struct sockaddr_in6 *)sa)->sin6_port);
    } else {
        return Py_BuildValue("(si)", "", 0);
    }
    if (inet_ntop(sa->ss_family, addr, host, sizeof(host)) == NULL)
        return PyErr_SetFromErrno(PyExc_OSError);
    return Py_BuildValue("(si)", host, port);
}

/* --- the relay ------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    int fd;
    Py_ssize_t max_datagram;
    double slack, grain;
    PyObject *sources, *targets;          /* dicts the Python side keeps */
    unsigned char *in_buf, *out_buf;
    struct mmsghdr in_msgs[BATCH], out_msgs[BATCH];
    struct iovec in_iov[BATCH], out_iov[BATCH];
    struct sockaddr_storage in_addr[BATCH], out_addr[BATCH];
    int count, cursor, pending, reads, drained;
    unsigned long long received, sent, relayed, relayed_bytes, send_failed;
} Relay;

static void
relay_dealloc(Relay *self)
{
    Py_XDECREF(self->sources);
    Py_XDECREF(self->targets);
    PyMem_Free(self->in_buf);
    PyMem_Free(self->out_buf);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
relay_init(Relay *self, PyObject *args, PyObject *kwargs)
{
    static char *names[] = {"fd", "max_datagram", "sources", "targets", "slack", "grain", NULL};
    PyObject *sources, *targets;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "inO!O!dd", names, &self->fd,
                                     &self->max_datagram, &PyDict_Type, &sources,
                                     &PyDict_Type, &targets, &self->slack, &self->grain))
        return -1;
    if (self->max_datagram < 1 || self->max_datagram > 65535) {
        PyErr_SetString(PyExc_ValueError, "max_datagram out of range");
        return -1;
    }
    Py_XSETREF(self->sources, Py_NewRef(sources));
    Py_XSETREF(self->targets, Py_NewRef(targets));
    PyMem_Free(self->in_buf);
    PyMem_Free(self->out_buf);
    /* one byte more than max_datagram: a longer datagram shows as too long */
    self->in_buf = PyMem_Malloc(BATCH * (self->max_datagram + 1));
    self->out_buf = PyMem_Malloc(BATCH * self->max_datagram);
    if (self->in_buf == NULL || self->out_buf == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset(self->in_msgs, 0, sizeof(self->in_msgs));
    memset(self->out_msgs, 0, sizeof(self->out_msgs));
    for (int i = 0; i < BATCH; i++) {
        self->in_iov[i].iov_base = self->in_buf + i * (self->max_datagram + 1);
        self->in_iov[i].iov_len = self->max_datagram + 1;
        self->in_msgs[i].msg_hdr.msg_iov = &self->in_iov[i];
        self->in_msgs[i].msg_hdr.msg_iovlen = 1;
        self->in_msgs[i].msg_hdr.msg_name = &self->in_addr[i];
        self->out_iov[i].iov_base = self->out_buf + i * self->max_datagram;
        self->out_msgs[i].msg_hdr.msg_iov = &self->out_iov[i];
        self->out_msgs[i].msg_hdr.msg_iovlen = 1;
        self->out_msgs[i].msg_hdr.msg_name = &self->out_addr[i];
    }
    self->count = self->cursor = self->pending = self->reads = self->drained = 0;
    return 0;
}

/* Send what is queued; a datagram the kernel refuses is counted and skipped. */
static void
flush(Relay *self)
{
    int done = 0;
    while (done < self->pending) {
        int n = sendmmsg(self->fd, self->out_msgs + done, self->pending - done, 0);
        if (n > 0) {
            self->sent += n;
            done += n;
        } else if (n == 0 || errno != EINTR) {
            self->send_failed++;
            done++;
        }
    }
    self->pending = 0;
}

/* Take one token from `host`'s bucket as ratelimit.TokenBuckets.allow does;
 * 1 taken, 0 not (a missing bucket, or too few tokens), -1 error. */
static int
take_token(PyObject *buckets, PyObject *host, double now, PyObject *rate_obj, PyObject *burst_obj)
{
    PyObject *bucket = PyDict_GetItemWithError(buckets, host), *moved, *value;
    double tokens, last, rate, burst;
    if (bucket == NULL)
        return PyErr_Occurred() ? -1 : 0;
    if (!PyList_CheckExact(bucket) || PyList_GET_SIZE(bucket) != 2)
        return 0;
    tokens = PyFloat_AsDouble(PyList_GET_ITEM(bucket, 0));
    last = PyFloat_AsDouble(PyList_GET_ITEM(bucket, 1));
    rate = PyFloat_AsDouble(rate_obj);
    burst = PyFloat_AsDouble(burst_obj);
    if (PyErr_Occurred())
        return -1;
    Py_INCREF(bucket);
    moved = PyObject_CallMethod(buckets, "move_to_end", "O", host);
    if (moved == NULL)
        goto error;
    Py_DECREF(moved);
    if (tokens < burst) {
        double refilled = tokens + (now - last) * rate;
        value = refilled < burst ? PyFloat_FromDouble(refilled) : Py_NewRef(burst_obj);
        if (value == NULL)
            goto error;
        PyList_SetItem(bucket, 0, value);
        tokens = refilled < burst ? refilled : burst;
    }
    if ((value = PyFloat_FromDouble(now)) == NULL)
        goto error;
    PyList_SetItem(bucket, 1, value);
    if (tokens < 1.0) {
        Py_DECREF(bucket);
        return 0;
    }
    if ((value = PyFloat_FromDouble(tokens - 1.0)) == NULL)
        goto error;
    PyList_SetItem(bucket, 0, value);
    Py_DECREF(bucket);
    return 1;
error:
    Py_DECREF(bucket);
    return -1;
}

typedef struct {
    PyObject *buckets, *rate, *burst;
} limiter_t;

/* The sender's entry in `sources`, (host, head, learned, proven), if it may
 * relay natively at `now`: a new reference, or NULL (an error set, or not). */
static PyObject *
sender(Relay *self, int i, double now)
{
    unsigned char key[KEY_MAX];
    Py_ssize_t key_len = address_key(&self->in_addr[i], key);
    PyObject *k, *entry;
    if (key_len < 0 || (k = PyBytes_FromStringAndSize((const char *)key, key_len)) == NULL)
        return NULL;
    entry = PyDict_GetItemWithError(self->sources, k);
    Py_DECREF(k);
    if (entry == NULL || !PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 4
            || !PyBytes_CheckExact(PyTuple_GET_ITEM(entry, 1))
            || !PyFloat_CheckExact(PyTuple_GET_ITEM(entry, 2))
            || now - PyFloat_AS_DOUBLE(PyTuple_GET_ITEM(entry, 2)) >= self->grain)
        return NULL;
    return Py_NewRef(entry);
}

/* Queue the relayed_packet for datagram i if the fast path may: 1 queued,
 * 0 for Python, -1 error.  `entry` is the sender's (see sender()). */
static int
queue(Relay *self, int i, double now, limiter_t *limiter, PyObject *entry)
{
    const unsigned char *data = self->in_iov[i].iov_base;
    Py_ssize_t size = self->in_msgs[i].msg_len, head_len, out_len;
    PyObject *k, *destination, *head = PyTuple_GET_ITEM(entry, 1);
    relay_t r;
    unsigned char *out;
    int taken;

    if (parse_relay(data, size, &r))
        return 0;
    if ((k = PyBytes_FromStringAndSize((const char *)r.target, r.target_len)) == NULL)
        return -1;
    destination = PyDict_GetItemWithError(self->targets, k);
    Py_DECREF(k);
    if (destination == NULL)
        return PyErr_Occurred() ? -1 : 0;
    head_len = PyBytes_GET_SIZE(head);
    out_len = head_len + r.payload_len + 1;
    if (out_len > self->max_datagram
            || (out_len - size - self->slack > 0 && PyTuple_GET_ITEM(entry, 3) != Py_True))
        return 0;                 /* too large; or budgeted, for Python to charge */
    if (!PyBytes_CheckExact(destination)
            || key_address(destination, &self->out_addr[self->pending],
                           &self->out_msgs[self->pending].msg_hdr.msg_namelen))
        return 0;
    taken = take_token(limiter->buckets, PyTuple_GET_ITEM(entry, 0), now, limiter->rate,
                       limiter->burst);
    if (taken <= 0)
        return taken;
    out = self->out_iov[self->pending].iov_base;
    memcpy(out, PyBytes_AS_STRING(head), head_len);
    memcpy(out + head_len, r.payload, r.payload_len);
    out[out_len - 1] = '}';
    self->out_iov[self->pending].iov_len = out_len;
    self->pending++;
    self->received++;
    self->relayed++;
    self->relayed_bytes += out_len;
    if (self->pending == BATCH)
        flush(self);
    return 1;
}

/* Forward datagram i if the fast path may: 1 queued, 0 for Python, -1 error. */
static int
forward(Relay *self, int i, double now, limiter_t *limiter)
{
    PyObject *entry;
    int done;
    if ((Py_ssize_t)self->in_msgs[i].msg_len > self->max_datagram)
        return 0;
    if ((entry = sender(self, i, now)) == NULL)
        return PyErr_Occurred() ? -1 : 0;
    done = queue(self, i, now, limiter, entry);      /* entry held: queue may run Python */
    Py_DECREF(entry);
    return done;
}

static int
limiter_fields(PyObject *limiter, limiter_t *out)
{
    out->buckets = PyObject_GetAttrString(limiter, "_buckets");
    out->rate = PyObject_GetAttrString(limiter, "rate");
    out->burst = PyObject_GetAttrString(limiter, "burst");
    if (out->buckets != NULL && out->rate != NULL && out->burst != NULL) {
        if (PyDict_Check(out->buckets))
            return 0;
        PyErr_SetString(PyExc_TypeError, "limiter._buckets must be a dict");
    }
    Py_XDECREF(out->buckets);
    Py_XDECREF(out->rate);
    Py_XDECREF(out->burst);
    return -1;
}

static double
monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Sleep until the socket is readable (1), or until `deadline` (monotonic)
 * or anything else on `others` (an epoll descriptor) is ready (0). */
static int
wait_readable(int fd, int others, double deadline)
{
    struct pollfd fds[2] = {{fd, POLLIN, 0}, {others, POLLIN, 0}};
    double left = deadline - monotonic();
    struct timespec timeout;
    int n;
    if (others < 0 || left <= 0)
        return 0;
    timeout.tv_sec = (time_t)left;
    timeout.tv_nsec = (long)((left - (double)timeout.tv_sec) * 1e9);
    Py_BEGIN_ALLOW_THREADS
    n = ppoll(fds, 2, &timeout, NULL);
    Py_END_ALLOW_THREADS
    return n > 0 && (fds[0].revents & POLLIN);
}

static PyObject *
relay_step(Relay *self, PyObject *args)
{
    double now, deadline = 0, start = monotonic();
    int others = -1;
    PyObject *limiter_obj, *result = NULL;
    limiter_t limiter;
    if (self->in_buf == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Relay.__init__ was not called");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "dO|di", &now, &limiter_obj, &deadline, &others)
            || limiter_fields(limiter_obj, &limiter))
        return NULL;
    for (;;) {
        if (self->cursor == self->count) {
            int n;
            if (self->drained && self->reads < MAX_BATCHES) {
                flush(self);
                if (wait_readable(self->fd, others, deadline)) {
                    double waited = monotonic();
                    now += waited - start;
                    start = waited;
                    self->drained = 0;
                }
            }
            if (self->drained || self->reads >= MAX_BATCHES) {
                self->reads = self->drained = 0;
                result = Py_NewRef(Py_None);
                break;
            }
            for (int i = 0; i < BATCH; i++) {
                self->in_msgs[i].msg_hdr.msg_namelen = sizeof(struct sockaddr_storage);
                self->in_msgs[i].msg_hdr.msg_flags = 0;
            }
            n = recvmmsg(self->fd, self->in_msgs, BATCH, MSG_DONTWAIT, NULL);
            if (n < 0) {
                if (errno == EINTR)
                    continue;
                self->count = self->cursor = self->reads = self->drained = 0;
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNREFUSED)
                    result = Py_NewRef(Py_None);
                else
                    PyErr_SetFromErrno(PyExc_OSError);
                break;
            }
            self->count = n;
            self->cursor = 0;
            self->reads++;
            self->drained = n < BATCH;
            continue;
        }
        int i = self->cursor++, done = forward(self, i, now, &limiter);
        if (done < 0) {           /* e.g. no memory: reported, and the datagram left to Python */
            PyErr_WriteUnraisable((PyObject *)self);
            done = 0;
        }
        if (done == 0) {
            PyObject *address = address_tuple(&self->in_addr[i]);
            if (address != NULL)
                result = Py_BuildValue("(y#N)", (const char *)self->in_iov[i].iov_base,
                                       (Py_ssize_t)self->in_msgs[i].msg_len, address);
            break;
        }
    }
    flush(self);
    Py_DECREF(limiter.buckets);
    Py_DECREF(limiter.rate);
    Py_DECREF(limiter.burst);
    return result;
}

static PyMethodDef relay_methods[] = {
    {"step", (PyCFunction)relay_step, METH_VARARGS,
     "step(now, limiter[, deadline, epoll_fd]): forward what the fast path may; the next "
     "datagram for Python as (data, (host, port)), or None when there is nothing more to "
     "read now (waiting for more until the monotonic deadline while epoll_fd is idle)."},
    {NULL}
};

static PyMemberDef relay_members[] = {
    {"received", T_ULONGLONG, offsetof(Relay, received), READONLY, "datagrams forwarded here"},
    {"sent", T_ULONGLONG, offsetof(Relay, sent), READONLY, "datagrams sent"},
    {"relayed", T_ULONGLONG, offsetof(Relay, relayed), READONLY, "relayed_packets built"},
    {"relayed_bytes", T_ULONGLONG, offsetof(Relay, relayed_bytes), READONLY, "their bytes"},
    {"send_failed", T_ULONGLONG, offsetof(Relay, send_failed), READONLY,
     "datagrams the kernel refused"},
    {NULL}
};

static PyTypeObject RelayType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "relayd.udp._fastrelay.Relay",
    .tp_doc = "Relay(fd, max_datagram, sources, targets, slack, grain): the native relay path.",
    .tp_basicsize = sizeof(Relay),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)relay_init,
    .tp_dealloc = (destructor)relay_dealloc,
    .tp_methods = relay_methods,
    .tp_members = relay_members,
};

static PyMethodDef module_methods[] = {
    {"relay_fields", relay_fields, METH_O,
     "relay_fields(data): (target, payload) bytes of a relay packet the fast path "
     "forwards, or None."},
    {NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "_fastrelay",
    .m_doc = "The UDP relay's fast path below Python.",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC
PyInit__fastrelay(void)
{
    PyObject *m;
    if (PyType_Ready(&RelayType) < 0)
        return NULL;
    if ((m = PyModule_Create(&module)) == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Relay", (PyObject *)&RelayType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
