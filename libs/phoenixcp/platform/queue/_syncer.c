/*
 * phoenixcp.platform.queue._syncer: group commit of a durable queue without the GIL.
 *
 * A Syncer owns one POSIX thread that never touches the interpreter. The event loop writes
 * records to the segment file itself (a page-cache write) and asks for a sync with
 * request(fd, flags), which returns a generation number. The thread takes every request
 * waiting, runs fdatasync (or fsync) on each file in request order, once per run of equal
 * requests, then publishes the last generation done and signals an eventfd that the loop
 * watches (fileno()). The loop calls completed() to learn (generation done, errno) and wakes
 * the appends waiting for that generation or an earlier one.
 *
 * Why: with a Python writer thread, every commit needed the GIL twice on the thread's side
 * (take the work, hand back the result), and on a loaded core each handoff waited behind the
 * loop (ADR 0014). The pure-Python twin (_syncer_py.py) has the same contract.
 *
 * An error is sticky: once a sync failed, completed() reports its errno for every later
 * generation too (the queue then fails appends until restart, as a failed fsync leaves the
 * file's state unknown).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#define FLAG_FULL 1      /* fsync instead of fdatasync (directories, metadata) */
#define FLAG_CLOSE 2     /* close the fd once synced (or skipped) */
#define FLAG_NO_SYNC 4   /* do not sync, only keep the order (e.g. close after the others) */

typedef struct {
    int fd;
    int flags;
    unsigned long long gen;
} Request;

typedef struct {
    PyObject_HEAD
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int efd;
    Request *reqs;
    size_t n, cap;
    unsigned long long next_gen;
    unsigned long long done_gen;
    int err;
    int stop;
    int running;
} Syncer;

static void run_batch(Syncer *self, Request *batch, size_t n) {
    int err = 0;
    for (size_t i = 0; i < n; i++) {
        Request *r = &batch[i];
        /* A run of equal sync requests is one sync: the later ones add nothing. */
        int same_as_next = i + 1 < n && batch[i + 1].fd == r->fd &&
                           batch[i + 1].flags == r->flags && !(r->flags & FLAG_CLOSE);
        if (!(r->flags & FLAG_NO_SYNC) && !same_as_next) {
            int rc;
            do {
                rc = (r->flags & FLAG_FULL) ? fsync(r->fd) : fdatasync(r->fd);
            } while (rc < 0 && errno == EINTR);
            if (rc < 0 && err == 0)
                err = errno;
        }
        if (r->flags & FLAG_CLOSE)
            close(r->fd);
    }
    pthread_mutex_lock(&self->mu);
    if (err && !self->err)
        self->err = err;
    self->done_gen = batch[n - 1].gen;
    /* Signalled under the lock that completed() clears it under: once completed() has
     * reported a generation, the eventfd is readable again only for a later one. */
    uint64_t one = 1;
    ssize_t w;
    do {
        w = write(self->efd, &one, sizeof one);
    } while (w < 0 && errno == EINTR);
    pthread_mutex_unlock(&self->mu);
}

static void *thread_main(void *arg) {
    Syncer *self = (Syncer *)arg;
    Request *batch = NULL;
    size_t batch_cap = 0;
    for (;;) {
        pthread_mutex_lock(&self->mu);
        while (self->n == 0 && !self->stop)
            pthread_cond_wait(&self->cv, &self->mu);
        if (self->n == 0 && self->stop) {
            pthread_mutex_unlock(&self->mu);
            break;
        }
        /* Swap the request array out: the loop appends to a fresh one meanwhile. */
        Request *taken = self->reqs;
        size_t n = self->n, taken_cap = self->cap;
        self->reqs = batch;
        self->cap = batch_cap;
        self->n = 0;
        pthread_mutex_unlock(&self->mu);
        run_batch(self, taken, n);
        batch = taken;
        batch_cap = taken_cap;
    }
    free(batch);
    return NULL;
}

static int Syncer_init(Syncer *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "", kwlist))
        return -1;
    if (self->running) {
        PyErr_SetString(PyExc_RuntimeError, "Syncer is already initialised");
        return -1;
    }
    self->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (self->efd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pthread_mutex_init(&self->mu, NULL);
    pthread_cond_init(&self->cv, NULL);
    self->reqs = NULL;
    self->n = self->cap = 0;
    self->next_gen = self->done_gen = 0;
    self->err = 0;
    self->stop = 0;
    int rc = pthread_create(&self->thread, NULL, thread_main, self);
    if (rc != 0) {
        close(self->efd);
        self->efd = -1;
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    self->running = 1;
    return 0;
}

static void stop_thread(Syncer *self) {
    if (!self->running)
        return;
    pthread_mutex_lock(&self->mu);
    self->stop = 1;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
    Py_BEGIN_ALLOW_THREADS
    pthread_join(self->thread, NULL);
    Py_END_ALLOW_THREADS
    self->running = 0;
}

static PyObject *Syncer_request(Syncer *self, PyObject *args) {
    int fd, flags = 0;
    if (!PyArg_ParseTuple(args, "i|i", &fd, &flags))
        return NULL;
    if (fd < 0) {
        PyErr_Format(PyExc_ValueError, "fd must be >= 0, got %d", fd);
        return NULL;
    }
    if (flags & ~(FLAG_FULL | FLAG_CLOSE | FLAG_NO_SYNC)) {
        PyErr_Format(PyExc_ValueError, "unknown flags 0x%x (allowed: FULL=1, CLOSE=2, NO_SYNC=4)",
                     flags);
        return NULL;
    }
    if (!self->running || self->stop) {
        PyErr_SetString(PyExc_RuntimeError, "the syncer is closed");
        return NULL;
    }
    pthread_mutex_lock(&self->mu);
    if (self->n == self->cap) {
        size_t cap = self->cap ? self->cap * 2 : 64;
        Request *grown = realloc(self->reqs, cap * sizeof(Request));
        if (grown == NULL) {
            pthread_mutex_unlock(&self->mu);
            return PyErr_NoMemory();
        }
        self->reqs = grown;
        self->cap = cap;
    }
    unsigned long long gen = ++self->next_gen;
    self->reqs[self->n].fd = fd;
    self->reqs[self->n].flags = flags;
    self->reqs[self->n].gen = gen;
    self->n++;
    pthread_cond_signal(&self->cv);
    pthread_mutex_unlock(&self->mu);
    return PyLong_FromUnsignedLongLong(gen);
}

static PyObject *Syncer_completed(Syncer *self, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&self->mu);
    if (self->efd >= 0) { /* nonblocking: an unsignalled eventfd answers EAGAIN */
        uint64_t v;
        ssize_t r;
        do {
            r = read(self->efd, &v, sizeof v);
        } while (r < 0 && errno == EINTR);
    }
    unsigned long long done = self->done_gen;
    int err = self->err;
    pthread_mutex_unlock(&self->mu);
    return Py_BuildValue("(Ki)", done, err);
}

static PyObject *Syncer_fileno(Syncer *self, PyObject *Py_UNUSED(ignored)) {
    if (self->efd < 0) {
        PyErr_SetString(PyExc_ValueError, "the syncer is closed");
        return NULL;
    }
    return PyLong_FromLong(self->efd);
}

static PyObject *Syncer_close(Syncer *self, PyObject *Py_UNUSED(ignored)) {
    stop_thread(self);
    if (self->efd >= 0) {
        close(self->efd);
        self->efd = -1;
    }
    Py_RETURN_NONE;
}

static void Syncer_dealloc(Syncer *self) {
    stop_thread(self);
    if (self->efd >= 0)
        close(self->efd);
    free(self->reqs);
    pthread_mutex_destroy(&self->mu);
    pthread_cond_destroy(&self->cv);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef Syncer_methods[] = {
    {"request", (PyCFunction)Syncer_request, METH_VARARGS,
     "request(fd, flags=0) -> generation: sync fd (after every earlier request)."},
    {"completed", (PyCFunction)Syncer_completed, METH_NOARGS,
     "completed() -> (generation done, errno or 0); also clears fileno()'s readiness."},
    {"fileno", (PyCFunction)Syncer_fileno, METH_NOARGS,
     "fileno() -> an eventfd, readable when generations completed."},
    {"close", (PyCFunction)Syncer_close, METH_NOARGS,
     "close(): finish the requests made, stop the thread. Idempotent."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject SyncerType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "phoenixcp.platform.queue._syncer.Syncer",
    .tp_basicsize = sizeof(Syncer),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Group commit on a thread of its own that never takes the GIL.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Syncer_init,
    .tp_dealloc = (destructor)Syncer_dealloc,
    .tp_methods = Syncer_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_syncer",
    "Group commit of a durable queue on a thread that never takes the GIL.", -1, NULL,
};

PyMODINIT_FUNC PyInit__syncer(void) {
    if (PyType_Ready(&SyncerType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&SyncerType);
    if (PyModule_AddObject(m, "Syncer", (PyObject *)&SyncerType) < 0 ||
        PyModule_AddIntConstant(m, "FULL", FLAG_FULL) < 0 ||
        PyModule_AddIntConstant(m, "CLOSE", FLAG_CLOSE) < 0 ||
        PyModule_AddIntConstant(m, "NO_SYNC", FLAG_NO_SYNC) < 0) {
        Py_DECREF(&SyncerType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
