/* The dominator walk's inner loop in C: diag.dominators._Walk.walk, step for step.
 *
 * The Python walk (diag/dominators.py) is the reference and the fallback where this module
 * could not be built; tests/test_dominators.py checks that both give the same labels, sizes
 * and shared entries on the same heap. This file only removes the interpreter's cost per
 * object: the same chunks, in the same order, the same refcount test, the same weights
 * (sys.getsizeof, and the weigher's extra bytes for the few types whose memory lies outside
 * Python's allocator).
 *
 * A guest in the host's process: the public C API (and _PySys_GetSizeOf, which CPython exports
 * up to 3.12); every object touched is held by a list this function owns while it is used; no
 * Python code runs while a container is traversed; and a failure (memory) is an exception for
 * the caller, as it would be from the Python walk, never a crash.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* Objects per chunk: dominators.CHUNK. */
#define CHUNK 4096
/* An object with one reference (its parent) seen while it sits once in the chunk's list of
 * referents has a refcount of 2: dominators._SINGLE less the argument getrefcount holds. */
#define SINGLE 2
/* dominators.BOUNDARY and dominators.SHARED. */
#define BOUNDARY (-1)
#define SHARED (-2)

/* sys.getsizeof, exceptions counted as 0 (a __sizeof__ that raises): dominators.sizeof. */
static long long
size_of(PyObject *getsizeof, PyObject *obj)
{
#if PY_VERSION_HEX < 0x030D0000
    /* What sys.getsizeof returns, without building its argument tuple and result (CPython
     * exports it up to 3.12; later versions call sys.getsizeof itself). */
    (void)getsizeof;
    size_t direct = _PySys_GetSizeOf(obj);
    if (direct == (size_t)-1) {
        PyErr_Clear();
        return 0;
    }
    return (long long)direct;
#else
    PyObject *size = PyObject_CallOneArg(getsizeof, obj);
    if (size == NULL) {
        PyErr_Clear();
        return 0;
    }
    long long value = PyLong_AsLongLong(size);
    Py_DECREF(size);
    if (value == -1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return value;
#endif
}

/* dominators._ATOMS: objects that refer to nothing, so there is nothing to walk. */
static int
is_atom(PyObject *obj)
{
    PyTypeObject *kind = Py_TYPE(obj);
    return kind == &PyUnicode_Type || kind == &PyBytes_Type || kind == &PyLong_Type ||
           kind == &PyFloat_Type || kind == &PyBool_Type || obj == Py_None ||
           kind == &PyComplex_Type;
}

static int
append_referent(PyObject *obj, void *kids)
{
    return PyList_Append((PyObject *)kids, obj);
}

/* ``obj`` into ``seen`` (id -> object, first seen first) unless it is there: the Python walk's
 * dict(zip(map(id, objects), objects)). -1 on error. */
static int
remember(PyObject *seen, PyObject *obj)
{
    PyObject *ident = PyLong_FromVoidPtr(obj);
    if (ident == NULL)
        return -1;
    int failed = PyDict_SetDefault(seen, ident, obj) == NULL;
    Py_DECREF(ident);
    return failed ? -1 : 0;
}

/* The extra bytes of a chunk's objects whose type the weigher calls special (its cache
 * first, its special() for a type it has not seen). -1 on error. */
static int
add_extra(PyObject *chunk, PyObject *cache, PyObject *special, PyObject *extra,
          long long *weight)
{
    Py_ssize_t n = PyList_GET_SIZE(chunk);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *obj = PyList_GET_ITEM(chunk, i);
        PyObject *kind = (PyObject *)Py_TYPE(obj);
        PyObject *known = PyDict_GetItemWithError(cache, kind); /* borrowed */
        int is_special;
        if (known == NULL) {
            if (PyErr_Occurred())
                return -1;
            PyObject *answer = PyObject_CallOneArg(special, kind);
            if (answer == NULL)
                return -1;
            is_special = PyObject_IsTrue(answer);
            Py_DECREF(answer);
        }
        else {
            is_special = PyObject_IsTrue(known);
        }
        if (is_special < 0)
            return -1;
        if (!is_special)
            continue;
        PyObject *bytes = PyObject_CallOneArg(extra, obj);
        if (bytes == NULL)
            return -1;
        long long value = PyLong_AsLongLong(bytes);
        Py_DECREF(bytes);
        if (value == -1 && PyErr_Occurred())
            return -1;
        *weight += value;
    }
    return 0;
}

/* The chunk's referents, as gc.get_referents(*chunk) lists them, then the str keys of its
 * dicts (a dict whose keys are all str does not show them to the gc), each such key once per
 * chunk. -1 on error. */
static int
list_referents(PyObject *chunk, PyObject *kids)
{
    Py_ssize_t n = PyList_GET_SIZE(chunk);
    PyObject *keys = NULL; /* id -> str key, in first-seen order */
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *obj = PyList_GET_ITEM(chunk, i);
        if (PyObject_IS_GC(obj)) {
            traverseproc traverse = Py_TYPE(obj)->tp_traverse;
            if (traverse != NULL && traverse(obj, append_referent, kids) != 0)
                goto error;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *obj = PyList_GET_ITEM(chunk, i);
        if (!PyDict_Check(obj))
            continue;
        Py_ssize_t at = 0;
        PyObject *key, *value;
        while (PyDict_Next(obj, &at, &key, &value)) {
            if (Py_TYPE(key) != &PyUnicode_Type)
                continue;
            if (keys == NULL && (keys = PyDict_New()) == NULL)
                goto error;
            if (remember(keys, key) < 0)
                goto error;
        }
    }
    if (keys != NULL) {
        Py_ssize_t at = 0;
        PyObject *ident, *key;
        while (PyDict_Next(keys, &at, &ident, &key)) {
            if (PyList_Append(kids, key) < 0)
                goto error;
        }
        Py_DECREF(keys);
    }
    return 0;
error:
    Py_XDECREF(keys);
    return -1;
}

static int
label_of(PyObject *value, long *label)
{
    *label = PyLong_AsLong(value);
    return (*label == -1 && PyErr_Occurred()) ? -1 : 0;
}

/* What the chunk refers to, split as the Python walk splits it: objects with one reference go
 * on to be walked (atoms among them weighed now); objects with more are looked up in
 * ``labels`` once per chunk. -1 on error. */
static int
split_referents(PyObject *kids, long label, PyObject *label_obj, int relabel,
                long relabel_from, PyObject *labels, PyObject *sources, PyObject *coarse,
                PyObject *entries, PyObject *getsizeof, PyObject *pending,
                long long *retained, long long *count)
{
    Py_ssize_t n = PyList_GET_SIZE(kids);
    /* Refcounts read before anything is appended anywhere, as map(getrefcount, kids) does. */
    char *many_refs = PyMem_Malloc(n > 0 ? (size_t)n : 1);
    if (many_refs == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < n; i++)
        many_refs[i] = Py_REFCNT(PyList_GET_ITEM(kids, i)) > SINGLE;
    PyObject *next = PyList_New(0);
    PyObject *unique = PyDict_New(); /* id -> object, first seen first */
    if (next == NULL || unique == NULL)
        goto error;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *kid = PyList_GET_ITEM(kids, i);
        if (many_refs[i]) {
            if (remember(unique, kid) < 0)
                goto error;
        }
        else if (is_atom(kid)) {
            *retained += size_of(getsizeof, kid);
            *count += 1;
        }
        else if (PyList_Append(next, kid) < 0) {
            goto error;
        }
    }
    PyMem_Free(many_refs);
    many_refs = NULL;
    const char *is_coarse = PyByteArray_AS_STRING(coarse);
    Py_ssize_t coarse_len = PyByteArray_GET_SIZE(coarse);
    Py_ssize_t at = 0;
    PyObject *ident, *kid;
    while (PyDict_Next(unique, &at, &ident, &kid)) {
        PyObject *had_obj = PyDict_GetItemWithError(labels, ident); /* borrowed */
        if (had_obj == NULL && PyErr_Occurred())
            goto error;
        long had = 0;
        if (had_obj != NULL && label_of(had_obj, &had) < 0)
            goto error;
        int is_free = relabel ? (had_obj != NULL && had == relabel_from) : had_obj == NULL;
        if (is_free && relabel) {
            /* A source keeps its label when a shared entry below it refers back to it. */
            int is_source = PySet_Contains(sources, ident);
            if (is_source < 0)
                goto error;
            is_free = !is_source;
        }
        if (is_free) {
            if (PyDict_SetItem(labels, ident, label_obj) < 0 || PyList_Append(next, kid) < 0)
                goto error;
            continue;
        }
        if (relabel || had_obj == NULL || had == label || had == BOUNDARY || had == SHARED)
            continue; /* settled, or (relabelling) a third owner's */
        int is_source = PySet_Contains(sources, ident);
        if (is_source < 0)
            goto error;
        if (is_source)
            continue; /* another source: it owns itself */
        int both_coarse = had < coarse_len && label < coarse_len && is_coarse[had] &&
                          is_coarse[label];
        if (is_atom(kid) || both_coarse) {
            PyObject *shared = PyLong_FromLong(SHARED);
            if (shared == NULL)
                goto error;
            int failed = PyDict_SetItem(labels, ident, shared) < 0;
            Py_DECREF(shared);
            if (failed)
                goto error;
            continue;
        }
        PyObject *entry = Py_BuildValue("(Oll)", kid, had, label);
        if (entry == NULL)
            goto error;
        int failed = PyList_Append(entries, entry) < 0;
        Py_DECREF(entry);
        if (failed)
            goto error;
    }
    Py_CLEAR(unique);
    if (PyList_SetSlice(pending, PyList_GET_SIZE(pending), PyList_GET_SIZE(pending), next) <
        0)
        goto error;
    Py_DECREF(next);
    return 0;
error:
    PyMem_Free(many_refs);
    Py_XDECREF(next);
    Py_XDECREF(unique);
    return -1;
}

PyDoc_STRVAR(walk_doc,
"walk(pending, label, relabel_from, labels, sources, coarse, special_cache, special, extra,\n"
"     entries, deadline, clock, getsizeof) -> (retained, count, out_of_time)\n\n"
"diag.dominators._Walk.walk's loop over ``pending`` (consumed). ``relabel_from``: None, or\n"
"the label whose objects move to ``label``.");

static PyObject *
walk(PyObject *module, PyObject *args)
{
    PyObject *pending, *label_obj, *relabel_obj, *labels, *sources, *coarse, *cache;
    PyObject *special, *extra, *entries, *clock, *getsizeof;
    double deadline;
    if (!PyArg_ParseTuple(args, "O!OOO!O!O!O!OOO!dOO:walk", &PyList_Type, &pending,
                          &label_obj, &relabel_obj, &PyDict_Type, &labels, &PySet_Type,
                          &sources, &PyByteArray_Type, &coarse, &PyDict_Type, &cache,
                          &special, &extra, &PyList_Type, &entries, &deadline, &clock,
                          &getsizeof))
        return NULL;
    long label, relabel_from = 0;
    if (label_of(label_obj, &label) < 0)
        return NULL;
    int relabel = relabel_obj != Py_None;
    if (relabel && label_of(relabel_obj, &relabel_from) < 0)
        return NULL;
    long long retained = 0, count = 0;
    int out_of_time = 0;
    while (PyList_GET_SIZE(pending) > 0) {
        PyObject *now = PyObject_CallNoArgs(clock);
        if (now == NULL)
            return NULL;
        double seconds = PyFloat_AsDouble(now);
        Py_DECREF(now);
        if (seconds == -1.0 && PyErr_Occurred())
            return NULL;
        if (seconds > deadline) {
            out_of_time = 1;
            break;
        }
        Py_ssize_t end = PyList_GET_SIZE(pending);
        Py_ssize_t start = end > CHUNK ? end - CHUNK : 0;
        PyObject *chunk = PyList_GetSlice(pending, start, end);
        if (chunk == NULL || PyList_SetSlice(pending, start, end, NULL) < 0) {
            Py_XDECREF(chunk);
            return NULL;
        }
        Py_ssize_t n = PyList_GET_SIZE(chunk);
        long long weight = 0;
        for (Py_ssize_t i = 0; i < n; i++)
            weight += size_of(getsizeof, PyList_GET_ITEM(chunk, i));
        if (add_extra(chunk, cache, special, extra, &weight) < 0) {
            Py_DECREF(chunk);
            return NULL;
        }
        retained += weight;
        count += n;
        PyObject *kids = PyList_New(0);
        if (kids == NULL || list_referents(chunk, kids) < 0) {
            Py_DECREF(chunk);
            Py_XDECREF(kids);
            return NULL;
        }
        /* The chunk is let go before refcounts are read, as in the Python walk: its objects
         * are held by their parents, and a reference from this list is none of theirs. */
        Py_DECREF(chunk);
        int failed = split_referents(kids, label, label_obj, relabel, relabel_from, labels,
                                     sources, coarse, entries, getsizeof, pending, &retained,
                                     &count);
        Py_DECREF(kids);
        if (failed)
            return NULL;
    }
    return Py_BuildValue("(LLO)", retained, count, out_of_time ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"walk", walk, METH_VARARGS, walk_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef walk_module = {
    PyModuleDef_HEAD_INIT,
    "diag._walk",
    "The dominator walk's inner loop in C (see diag.dominators).",
    -1,
    methods,
    NULL,
    NULL,
    NULL,
    NULL,
};

PyMODINIT_FUNC
PyInit__walk(void)
{
    return PyModule_Create(&walk_module);
}
