/*
 * ledger.c - the job's SQLite ledger (see ledger.h for the model).
 *
 * Durability: WAL mode with synchronous=FULL. Against kill -9 alone NORMAL
 * would do (a committed transaction is in the WAL, in the OS page cache,
 * the moment COMMIT returns); FULL also syncs the WAL on every commit, so
 * the guarantee holds through a power cut or kernel panic as well: a
 * document whose line the results file holds (fdatasync'd first, see
 * output.h) and whose commit returned is never lost and never redone. The
 * price is one WAL fsync per finished document, which is nothing next to
 * the seconds of generation behind each one; ingest batches many inserts in
 * one transaction (ledger_begin/commit) and pays one fsync per batch.
 *
 * Finishing is a single UPDATE guarded by state = 'pending': atomic by
 * itself, and a second finish of the same key changes nothing and reports
 * an error, so a document cannot be recorded twice.
 *
 * Statements are prepared once per handle and cached (ledger_stmt); the
 * pending iterator pages through an index by (prompt_tokens, seq) and keeps
 * no statement open between calls, so writes interleave freely with it.
 */
#include "config.h"

#include "ledger.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "strbuf.h"

enum {
    ST_HAS_KEY,
    ST_ADD_PENDING,
    ST_ADD_FAILED,
    ST_FINISH,
    ST_PENDING_PAGE,
    ST_PENDING_LOAD,
    ST_JSONL_END,
    ST_SET_JSONL_END,
    ST_LAST_DONE,
    ST_META_SET,
    ST_META_GET,
    ST_COUNT
};

#define LAST_DONE_STRS 7

struct ledger {
    sqlite3 *db;
    char *path;
    int lock_fd; /* -1 when not holding the lock */
    int in_batch;
    /* The current configuration (config hash of the last run begun on this
     * ledger, kept in meta "config_hash"), or NULL before any run. New
     * documents are stamped with it; readers see only its documents. */
    char *config_hash;
    int config_gen; /* bumped when config_hash changes (see output.c) */
    int64_t run_id;
    sqlite3_stmt *stmts[ST_COUNT];
    char *last_done_strs[LAST_DONE_STRS]; /* owned copies for ledger_last_done */
};

/* Columns every document reader selects, in the order fill_doc reads them. */
#define DOC_COLUMNS                                                                                \
    "key, doc_id, source, state, attempts, error, content, reasoning, finish_reason, "             \
    "thinking_truncated, prompt_tokens, completion_tokens, seconds, finished_at, "                 \
    "run_id, jsonl_end, done_seq"

static const char *const schema_sql =
    "CREATE TABLE documents ("
    "  key TEXT PRIMARY KEY,"
    "  doc_id TEXT NOT NULL,"
    "  source TEXT NOT NULL,"
    "  prompt_tokens INTEGER NOT NULL DEFAULT 0,"
    "  prompt_ids BLOB," /* int32 little-endian; kept while pending or failed */
    "  params TEXT,"
    "  state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),"
    "  attempts INTEGER NOT NULL DEFAULT 0,"
    "  error TEXT,"
    "  content TEXT,"
    "  reasoning TEXT,"
    "  finish_reason TEXT CHECK (finish_reason IN ('stop', 'length', 'error')),"
    "  thinking_truncated INTEGER NOT NULL DEFAULT 0,"
    "  completion_tokens INTEGER NOT NULL DEFAULT 0,"
    "  seconds REAL,"
    "  finished_at INTEGER,"
    "  run_id INTEGER,"
    "  jsonl_end INTEGER,"
    "  seq INTEGER NOT NULL,"
    "  done_seq INTEGER,"
    "  config_hash TEXT"
    ");"
    "CREATE UNIQUE INDEX documents_seq ON documents(seq);"
    "CREATE INDEX documents_pending ON documents(config_hash, prompt_tokens, seq)"
    "  WHERE state = 'pending';"
    "CREATE INDEX documents_done_seq ON documents(done_seq);"
    "CREATE INDEX documents_config_done ON documents(config_hash, done_seq);"
    "CREATE INDEX documents_run ON documents(run_id);"
    "CREATE TABLE runs ("
    "  id INTEGER PRIMARY KEY,"
    "  started REAL NOT NULL,"
    "  ended REAL,"
    "  host TEXT,"
    "  pid INTEGER,"
    "  version TEXT,"
    "  config_hash TEXT,"
    "  backend TEXT,"
    "  docs_done INTEGER,"
    "  docs_failed INTEGER,"
    "  prompt_tokens INTEGER,"
    "  completion_tokens INTEGER,"
    "  seconds REAL,"
    "  exit_status INTEGER"
    ");"
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT);";

static const char *const stmt_sql[ST_COUNT] = {
    [ST_HAS_KEY] = "SELECT 1 FROM documents WHERE key = ?1",
    [ST_ADD_PENDING] =
        "INSERT OR IGNORE INTO documents (key, doc_id, source, prompt_tokens, prompt_ids, params,"
        " state, attempts, run_id, seq, config_hash)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending', 0, ?7,"
        "  (SELECT coalesce(max(seq), 0) + 1 FROM documents), ?8)",
    [ST_ADD_FAILED] =
        "INSERT OR IGNORE INTO documents (key, doc_id, source, state, attempts, error,"
        " finish_reason, finished_at, run_id, seq, config_hash)"
        " VALUES (?1, ?2, ?3, 'failed', 1, ?4, 'error', ?5, ?6,"
        "  (SELECT coalesce(max(seq), 0) + 1 FROM documents), ?7)",
    [ST_FINISH] =
        "UPDATE documents SET state = ?2, attempts = attempts + 1, error = ?3, content = ?4,"
        " reasoning = ?5, finish_reason = ?6, thinking_truncated = ?7,"
        " prompt_tokens = CASE WHEN ?8 > 0 THEN ?8 ELSE prompt_tokens END,"
        " completion_tokens = ?9, seconds = ?10, finished_at = ?11, run_id = ?12,"
        " jsonl_end = CASE WHEN ?2 = 'done' THEN ?13 ELSE NULL END,"
        " done_seq = CASE WHEN ?2 = 'done'"
        "   THEN (SELECT coalesce(max(done_seq), 0) + 1 FROM documents) ELSE NULL END,"
        " prompt_ids = CASE WHEN ?2 = 'done' THEN NULL ELSE prompt_ids END"
        " WHERE key = ?1 AND state = 'pending'",
    [ST_PENDING_PAGE] =
        "SELECT key, prompt_tokens, seq FROM documents"
        " WHERE state = 'pending' AND config_hash IS ?4 AND (prompt_tokens, seq) > (?1, ?2)"
        " ORDER BY prompt_tokens, seq LIMIT ?3",
    [ST_PENDING_LOAD] = "SELECT doc_id, source, params, prompt_ids, attempts FROM documents"
                        " WHERE key = ?1 AND state = 'pending'",
    [ST_JSONL_END] =
        "SELECT jsonl_end FROM documents WHERE config_hash IS ?1 AND done_seq IS NOT NULL"
        " ORDER BY done_seq DESC LIMIT 1",
    [ST_SET_JSONL_END] = "UPDATE documents SET jsonl_end = ?2 WHERE done_seq = ?1",
    [ST_LAST_DONE] =
        "SELECT " DOC_COLUMNS " FROM documents WHERE config_hash IS ?1 AND done_seq IS NOT NULL"
        " ORDER BY done_seq DESC LIMIT 1",
    [ST_META_SET] = "INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)",
    [ST_META_GET] = "SELECT value FROM meta WHERE key = ?1",
};

static int db_error(ledger *l, errbuf *err, const char *what)
{
    return errorf(err, "%s: %s: %s", l->path, what, sqlite3_errmsg(l->db));
}

/* The cached statement `which`, reset and with bindings cleared. */
static sqlite3_stmt *ledger_stmt(ledger *l, int which, errbuf *err)
{
    sqlite3_stmt *s = l->stmts[which];
    if (!s) {
        if (sqlite3_prepare_v3(l->db, stmt_sql[which], -1, SQLITE_PREPARE_PERSISTENT, &s, NULL) !=
            SQLITE_OK) {
            db_error(l, err, "preparing a statement");
            return NULL;
        }
        l->stmts[which] = s;
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return s;
}

static int exec(ledger *l, const char *sql, const char *what, errbuf *err)
{
    char *msg = NULL;
    if (sqlite3_exec(l->db, sql, NULL, NULL, &msg) != SQLITE_OK) {
        errorf(err, "%s: %s: %s", l->path, what, msg ? msg : sqlite3_errmsg(l->db));
        sqlite3_free(msg);
        return -1;
    }
    return 0;
}

/* Runs a statement that returns no rows (or whose rows do not matter). */
static int step_done(ledger *l, sqlite3_stmt *s, const char *what, errbuf *err)
{
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW)
        ;
    int bad = rc != SQLITE_DONE;
    if (bad)
        db_error(l, err, what);
    sqlite3_reset(s);
    return bad ? -1 : 0;
}

static double now_unix(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int64_t query_int(ledger *l, const char *sql, int64_t *value, errbuf *err)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(l->db, sql, -1, &s, NULL) != SQLITE_OK)
        return db_error(l, err, "reading the schema");
    int rc = sqlite3_step(s);
    *value = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        db_error(l, err, "reading the schema");
        sqlite3_finalize(s);
        return -1;
    }
    sqlite3_finalize(s);
    return 0;
}

/* Creates the schema in an empty database, or checks an existing one. */
static int check_schema(ledger *l, int may_create, errbuf *err)
{
    int64_t version, n_objects;
    if (query_int(l, "PRAGMA user_version", &version, err) < 0 ||
        query_int(l, "SELECT count(*) FROM sqlite_master", &n_objects, err) < 0)
        return -1;
    if (version == LEDGER_SCHEMA_VERSION)
        return 0;
    if (version > LEDGER_SCHEMA_VERSION)
        return errorf(err,
                      "%s: ledger schema version %lld is newer than this qwen3-batch "
                      "understands (%d); use a newer qwen3-batch",
                      l->path, (long long)version, LEDGER_SCHEMA_VERSION);
    if (n_objects > 0)
        return errorf(err, "%s: an SQLite database that is not a qwen3-batch ledger", l->path);
    if (!may_create)
        return errorf(err, "%s: an empty database, not a ledger (no run has written it)", l->path);
    /* BEGIN IMMEDIATE: two processes creating at once must not both succeed. */
    if (exec(l, "BEGIN IMMEDIATE", "creating the ledger", err) < 0)
        return -1;
    if (query_int(l, "PRAGMA user_version", &version, err) < 0)
        goto fail;
    if (version == LEDGER_SCHEMA_VERSION)
        return exec(l, "COMMIT", "creating the ledger", err);
    char sql[64];
    snprintf(sql, sizeof sql, "PRAGMA user_version = %d", LEDGER_SCHEMA_VERSION);
    if (exec(l, schema_sql, "creating the ledger", err) < 0 ||
        exec(l, sql, "creating the ledger", err) < 0 ||
        exec(l, "COMMIT", "creating the ledger", err) < 0)
        goto fail;
    return 0;
fail:
    sqlite3_exec(l->db, "ROLLBACK", NULL, NULL, NULL);
    return -1;
}

static int open_common(ledger **out, const char *path, int create, errbuf *err)
{
    *out = NULL;
    if (!create) {
        struct stat st;
        if (stat(path, &st) < 0) {
            if (errno == ENOENT)
                return errorf(err, "%s: no ledger (no run has written it yet)", path),
                       LEDGER_MISSING;
            return errorf(err, "%s: %s", path, strerror(errno));
        }
    }
    ledger *l = calloc(1, sizeof *l);
    if (!l)
        return errorf(err, "%s: out of memory", path);
    l->path = strdup(path);
    l->lock_fd = -1;
    if (!l->path) {
        free(l);
        return errorf(err, "%s: out of memory", path);
    }
    int flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX;
    if (sqlite3_open_v2(path, &l->db, flags, NULL) != SQLITE_OK) {
        errorf(err, "%s: cannot open the ledger: %s", path,
               l->db ? sqlite3_errmsg(l->db) : "out of memory");
        ledger_close(l);
        return -1;
    }
    sqlite3_extended_result_codes(l->db, 1);
    sqlite3_busy_timeout(l->db, 30000);
    /* journal_mode is stored in the file; setting it needs a write, so a
     * reader leaves it to the writer that created the ledger. */
    if ((create && exec(l, "PRAGMA journal_mode = WAL", "setting WAL mode", err) < 0) ||
        exec(l, "PRAGMA synchronous = FULL", "setting synchronous", err) < 0 ||
        check_schema(l, create, err) < 0) {
        ledger_close(l);
        return -1;
    }
    if (ledger_meta_get(l, "config_hash", &l->config_hash, err) < 0) {
        ledger_close(l);
        return -1;
    }
    *out = l;
    return 0;
}

int ledger_open(ledger **out, const char *path, errbuf *err)
{
    return open_common(out, path, 1, err);
}

int ledger_open_existing(ledger **out, const char *path, errbuf *err)
{
    return open_common(out, path, 0, err);
}

void ledger_close(ledger *l)
{
    if (!l)
        return;
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(l->stmts[i]);
    for (int i = 0; i < LAST_DONE_STRS; i++)
        free(l->last_done_strs[i]);
    if (l->db)
        sqlite3_close(l->db);
    if (l->lock_fd >= 0)
        close(l->lock_fd); /* releases the flock */
    free(l->config_hash);
    free(l->path);
    free(l);
}

const char *ledger_path(const ledger *l)
{
    return l->path;
}

/* ---- lock ------------------------------------------------------------------ */

/* The holder's "host pid" from the lock file as "host H, pid P". */
static void read_holder(int fd, char *holder, size_t n)
{
    char line[300] = "";
    ssize_t got = pread(fd, line, sizeof line - 1, 0);
    line[got > 0 ? got : 0] = '\0';
    char host[256] = "?";
    long long pid = 0;
    if (sscanf(line, "%255s %lld", host, &pid) == 2)
        snprintf(holder, n, "host %s, pid %lld", host, pid);
    else /* a holder that has just taken the lock may not have written yet */
        snprintf(holder, n, "holder unknown");
}

int ledger_lock_holder(const char *path, char *holder, size_t n)
{
    strbuf lock_path = STRBUF_INIT;
    sb_addf(&lock_path, "%s.lock", path);
    int fd = open(lock_path.buf, O_RDONLY | O_CLOEXEC);
    sb_release(&lock_path);
    if (n > 0)
        holder[0] = '\0';
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    int rc = 0;
    if (flock(fd, LOCK_SH | LOCK_NB) < 0) {
        rc = errno == EWOULDBLOCK ? 1 : -1;
        if (rc == 1)
            read_holder(fd, holder, n);
    }
    close(fd); /* drops the shared lock if it was taken */
    return rc;
}

int ledger_lock(ledger *l, errbuf *err)
{
    if (l->lock_fd >= 0)
        return 0;
    strbuf lock_path = STRBUF_INIT;
    sb_addf(&lock_path, "%s.lock", l->path);
    int fd = open(lock_path.buf, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) {
        errorf(err, "%s: cannot open the lock file: %s", lock_path.buf, strerror(errno));
        sb_release(&lock_path);
        return -1;
    }
    if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
        int e = errno;
        if (e == EWOULDBLOCK) {
            char holder[300];
            read_holder(fd, holder, sizeof holder);
            errorf(err, "%s is locked by another run (%s)", l->path, holder);
            close(fd);
            sb_release(&lock_path);
            return LEDGER_LOCKED;
        }
        errorf(err, "%s: cannot lock: %s", lock_path.buf, strerror(e));
        close(fd);
        sb_release(&lock_path);
        return -1;
    }
    char host[256] = "unknown";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    char line[320];
    int n = snprintf(line, sizeof line, "%s %lld\n", host, (long long)getpid());
    if (ftruncate(fd, 0) < 0 || pwrite(fd, line, n, 0) != n) {
        errorf(err, "%s: cannot write the lock file: %s", lock_path.buf, strerror(errno));
        close(fd);
        sb_release(&lock_path);
        return -1;
    }
    sb_release(&lock_path);
    l->lock_fd = fd;
    return 0;
}

/* ---- runs ------------------------------------------------------------------ */

int ledger_run_begin(ledger *l, const char *config_hash, const char *backend, const char *version,
                     int64_t *run_id, errbuf *err)
{
    char host[256] = "unknown";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = '\0';
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(l->db,
                           "INSERT INTO runs (started, host, pid, version, config_hash, backend)"
                           " VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                           -1, &s, NULL) != SQLITE_OK)
        return db_error(l, err, "recording the run");
    sqlite3_bind_double(s, 1, now_unix());
    sqlite3_bind_text(s, 2, host, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(s, 3, getpid());
    sqlite3_bind_text(s, 4, version, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 5, config_hash, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(s, 6, backend, -1, SQLITE_TRANSIENT);
    int rc = step_done(l, s, "recording the run", err);
    sqlite3_finalize(s);
    if (rc < 0)
        return -1;
    l->run_id = sqlite3_last_insert_rowid(l->db);
    if (config_hash && (!l->config_hash || strcmp(config_hash, l->config_hash))) {
        if (ledger_meta_set(l, "config_hash", config_hash, err) < 0)
            return -1;
        free(l->config_hash);
        l->config_hash = strdup(config_hash);
        if (!l->config_hash)
            return errorf(err, "%s: out of memory", l->path);
        l->config_gen++;
    }
    *run_id = l->run_id;
    return 0;
}

int ledger_run_end(ledger *l, int64_t run_id, const ledger_run_totals *t, int exit_status,
                   errbuf *err)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(l->db,
                           "UPDATE runs SET ended = ?2, docs_done = ?3, docs_failed = ?4,"
                           " prompt_tokens = ?5, completion_tokens = ?6, seconds = ?7,"
                           " exit_status = ?8 WHERE id = ?1",
                           -1, &s, NULL) != SQLITE_OK)
        return db_error(l, err, "recording the end of the run");
    sqlite3_bind_int64(s, 1, run_id);
    sqlite3_bind_double(s, 2, now_unix());
    sqlite3_bind_int64(s, 3, t->docs_done);
    sqlite3_bind_int64(s, 4, t->docs_failed);
    sqlite3_bind_int64(s, 5, t->prompt_tokens);
    sqlite3_bind_int64(s, 6, t->completion_tokens);
    sqlite3_bind_double(s, 7, t->seconds);
    sqlite3_bind_int(s, 8, exit_status);
    int rc = step_done(l, s, "recording the end of the run", err);
    sqlite3_finalize(s);
    if (rc == 0 && sqlite3_changes(l->db) != 1)
        return errorf(err, "%s: no run %lld to end", l->path, (long long)run_id);
    return rc;
}

/* ---- meta ------------------------------------------------------------------ */

int ledger_meta_set(ledger *l, const char *key, const char *value, errbuf *err)
{
    sqlite3_stmt *s = ledger_stmt(l, ST_META_SET, err);
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, value, -1, SQLITE_STATIC);
    return step_done(l, s, "writing meta", err);
}

int ledger_meta_get(ledger *l, const char *key, char **value, errbuf *err)
{
    *value = NULL;
    sqlite3_stmt *s = ledger_stmt(l, ST_META_GET, err);
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW && sqlite3_column_type(s, 0) != SQLITE_NULL)
        *value = strdup((const char *)sqlite3_column_text(s, 0));
    sqlite3_reset(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return db_error(l, err, "reading meta");
    return 0;
}

/* ---- batches --------------------------------------------------------------- */

int ledger_begin(ledger *l, errbuf *err)
{
    if (l->in_batch)
        return errorf(err, "%s: a batch is already open", l->path);
    if (exec(l, "BEGIN IMMEDIATE", "starting a transaction", err) < 0)
        return -1;
    l->in_batch = 1;
    return 0;
}

int ledger_commit(ledger *l, errbuf *err)
{
    if (!l->in_batch)
        return errorf(err, "%s: no batch is open", l->path);
    if (exec(l, "COMMIT", "committing", err) < 0) {
        sqlite3_exec(l->db, "ROLLBACK", NULL, NULL, NULL);
        l->in_batch = 0;
        return -1;
    }
    l->in_batch = 0;
    return 0;
}

int ledger_rollback(ledger *l, errbuf *err)
{
    if (!l->in_batch)
        return 0;
    l->in_batch = 0;
    return exec(l, "ROLLBACK", "rolling back", err);
}

/* ---- adding documents ------------------------------------------------------ */

int ledger_has_key(ledger *l, const char *key, int *found, errbuf *err)
{
    sqlite3_stmt *s = ledger_stmt(l, ST_HAS_KEY, err);
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    *found = rc == SQLITE_ROW;
    sqlite3_reset(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return db_error(l, err, "looking up a document");
    return 0;
}

int ledger_add_pending_params(ledger *l, const char *key, const char *doc_id, const char *source,
                              const int32_t *ids, int n_ids, const char *params, errbuf *err)
{
    if (n_ids < 0 || (n_ids > 0 && !ids))
        return errorf(err, "%s: document %s: bad prompt ids", l->path, doc_id);
    sqlite3_stmt *s = ledger_stmt(l, ST_ADD_PENDING, err);
    if (!s)
        return -1;
    /* Little-endian on every host, so a ledger can move between machines. */
    unsigned char *blob = malloc(n_ids ? (size_t)n_ids * 4 : 1);
    if (!blob)
        return errorf(err, "%s: out of memory", l->path);
    for (int i = 0; i < n_ids; i++) {
        uint32_t v = (uint32_t)ids[i];
        blob[4 * i] = v & 0xff;
        blob[4 * i + 1] = (v >> 8) & 0xff;
        blob[4 * i + 2] = (v >> 16) & 0xff;
        blob[4 * i + 3] = v >> 24;
    }
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, doc_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, source, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 4, n_ids);
    sqlite3_bind_blob(s, 5, blob, n_ids * 4, free);
    if (params)
        sqlite3_bind_text(s, 6, params, -1, SQLITE_STATIC);
    if (l->run_id)
        sqlite3_bind_int64(s, 7, l->run_id);
    sqlite3_bind_text(s, 8, l->config_hash, -1, SQLITE_STATIC);
    return step_done(l, s, "adding a document", err);
}

int ledger_add_pending(ledger *l, const char *key, const char *doc_id, const char *source,
                       const int32_t *ids, int n_ids, errbuf *err)
{
    return ledger_add_pending_params(l, key, doc_id, source, ids, n_ids, NULL, err);
}

int ledger_add_failed(ledger *l, const char *key, const char *doc_id, const char *source,
                      const char *error, errbuf *err)
{
    sqlite3_stmt *s = ledger_stmt(l, ST_ADD_FAILED, err);
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, doc_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 3, source, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 4, error ? error : "failed", -1, SQLITE_STATIC);
    sqlite3_bind_int64(s, 5, (int64_t)now_unix());
    if (l->run_id)
        sqlite3_bind_int64(s, 6, l->run_id);
    sqlite3_bind_text(s, 7, l->config_hash, -1, SQLITE_STATIC);
    return step_done(l, s, "adding a failed document", err);
}

/* ---- pending iterator ------------------------------------------------------ */

#define PENDING_PAGE 256

struct ledger_pending_iter {
    ledger *l;
    char *keys[PENDING_PAGE];
    int n_page, pos;
    int64_t last_tokens, last_seq; /* keyset position: the last row paged in */
    int at_end;
    /* the current document's data */
    char *key, *doc_id, *source, *params;
    int32_t *ids;
};

int ledger_pending_open(ledger *l, ledger_pending_iter **it, errbuf *err)
{
    *it = calloc(1, sizeof **it);
    if (!*it)
        return errorf(err, "%s: out of memory", l->path);
    (*it)->l = l;
    (*it)->last_tokens = INT64_MIN;
    (*it)->last_seq = INT64_MIN;
    return 0;
}

static void pending_free_page(ledger_pending_iter *it)
{
    for (int i = 0; i < it->n_page; i++)
        free(it->keys[i]);
    it->n_page = it->pos = 0;
}

static void pending_free_current(ledger_pending_iter *it)
{
    free(it->key);
    free(it->doc_id);
    free(it->source);
    free(it->params);
    free(it->ids);
    it->key = it->doc_id = it->source = it->params = NULL;
    it->ids = NULL;
}

static int pending_fill_page(ledger_pending_iter *it, errbuf *err)
{
    ledger *l = it->l;
    pending_free_page(it);
    sqlite3_stmt *s = ledger_stmt(l, ST_PENDING_PAGE, err);
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, it->last_tokens);
    sqlite3_bind_int64(s, 2, it->last_seq);
    sqlite3_bind_int(s, 3, PENDING_PAGE);
    sqlite3_bind_text(s, 4, l->config_hash, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        char *key = strdup((const char *)sqlite3_column_text(s, 0));
        if (!key) {
            sqlite3_reset(s);
            return errorf(err, "%s: out of memory", l->path);
        }
        it->keys[it->n_page++] = key;
        it->last_tokens = sqlite3_column_int64(s, 1);
        it->last_seq = sqlite3_column_int64(s, 2);
    }
    sqlite3_reset(s);
    if (rc != SQLITE_DONE)
        return db_error(l, err, "reading the pending documents");
    if (it->n_page < PENDING_PAGE)
        it->at_end = 1;
    return 0;
}

static char *dup_column(sqlite3_stmt *s, int col)
{
    if (sqlite3_column_type(s, col) == SQLITE_NULL)
        return NULL;
    const char *t = (const char *)sqlite3_column_text(s, col);
    return t ? strdup(t) : NULL;
}

int ledger_pending_next(ledger_pending_iter *it, ledger_pending_doc *doc, errbuf *err)
{
    ledger *l = it->l;
    pending_free_current(it);
    for (;;) {
        if (it->pos == it->n_page) {
            if (it->at_end)
                return 0;
            if (pending_fill_page(it, err) < 0)
                return -1;
            if (it->n_page == 0)
                return 0;
        }
        const char *key = it->keys[it->pos++];
        sqlite3_stmt *s = ledger_stmt(l, ST_PENDING_LOAD, err);
        if (!s)
            return -1;
        sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
        int rc = sqlite3_step(s);
        if (rc == SQLITE_DONE) { /* finished (or removed) since the page was read */
            sqlite3_reset(s);
            continue;
        }
        if (rc != SQLITE_ROW) {
            sqlite3_reset(s);
            return db_error(l, err, "reading a pending document");
        }
        int n_bytes = sqlite3_column_bytes(s, 3);
        const unsigned char *blob = sqlite3_column_blob(s, 3);
        if (n_bytes % 4 != 0) {
            sqlite3_reset(s);
            return errorf(err, "%s: document %s: corrupt prompt ids (%d bytes)", l->path, key,
                          n_bytes);
        }
        int n_ids = n_bytes / 4;
        it->ids = malloc(n_ids ? (size_t)n_ids * sizeof(int32_t) : 1);
        it->key = strdup(key);
        it->doc_id = dup_column(s, 0);
        it->source = dup_column(s, 1);
        it->params = dup_column(s, 2);
        if (!it->ids || !it->key || !it->doc_id || !it->source) {
            sqlite3_reset(s);
            return errorf(err, "%s: out of memory", l->path);
        }
        for (int i = 0; i < n_ids; i++)
            it->ids[i] =
                (int32_t)((uint32_t)blob[4 * i] | (uint32_t)blob[4 * i + 1] << 8 |
                          (uint32_t)blob[4 * i + 2] << 16 | (uint32_t)blob[4 * i + 3] << 24);
        doc->attempts = sqlite3_column_int(s, 4);
        sqlite3_reset(s);
        doc->key = it->key;
        doc->doc_id = it->doc_id;
        doc->source = it->source;
        doc->params = it->params;
        doc->ids = it->ids;
        doc->n_ids = n_ids;
        return 1;
    }
}

void ledger_pending_close(ledger_pending_iter *it)
{
    if (!it)
        return;
    pending_free_page(it);
    pending_free_current(it);
    free(it);
}

/* ---- finishing ------------------------------------------------------------- */

int ledger_finish_doc(ledger *l, const char *key, const ledger_output *out, errbuf *err)
{
    const char *fr = out->finish_reason;
    if (!fr || (strcmp(fr, "stop") && strcmp(fr, "length") && strcmp(fr, "error")))
        return errorf(err, "%s: document %s: finish_reason must be stop, length or error", l->path,
                      key);
    int failed = !strcmp(fr, "error");
    if (!failed && !out->content)
        return errorf(err, "%s: document %s: no content", l->path, key);
    sqlite3_stmt *s = ledger_stmt(l, ST_FINISH, err);
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 2, failed ? "failed" : "done", -1, SQLITE_STATIC);
    if (failed)
        sqlite3_bind_text(s, 3, out->error ? out->error : "error", -1, SQLITE_STATIC);
    if (out->content)
        sqlite3_bind_text(s, 4, out->content, -1, SQLITE_STATIC);
    if (out->reasoning)
        sqlite3_bind_text(s, 5, out->reasoning, -1, SQLITE_STATIC);
    sqlite3_bind_text(s, 6, fr, -1, SQLITE_STATIC);
    sqlite3_bind_int(s, 7, out->thinking_truncated ? 1 : 0);
    sqlite3_bind_int(s, 8, out->prompt_tokens);
    sqlite3_bind_int(s, 9, out->completion_tokens);
    sqlite3_bind_double(s, 10, out->seconds);
    sqlite3_bind_int64(s, 11, out->finished_at ? out->finished_at : (int64_t)now_unix());
    if (out->run_id)
        sqlite3_bind_int64(s, 12, out->run_id);
    sqlite3_bind_int64(s, 13, out->jsonl_end);
    if (step_done(l, s, "recording a finished document", err) < 0)
        return -1;
    if (sqlite3_changes(l->db) != 1) {
        int found = 0;
        if (ledger_has_key(l, key, &found, err) < 0)
            return -1;
        return errorf(err, "%s: document %s %s", l->path, key,
                      found ? "is not pending (finished twice?)" : "is not in the ledger");
    }
    return 0;
}

int64_t ledger_jsonl_end(ledger *l)
{
    sqlite3_stmt *s = ledger_stmt(l, ST_JSONL_END, NULL);
    if (!s)
        return 0;
    sqlite3_bind_text(s, 1, l->config_hash, -1, SQLITE_STATIC);
    int64_t end = 0;
    if (sqlite3_step(s) == SQLITE_ROW)
        end = sqlite3_column_int64(s, 0);
    sqlite3_reset(s);
    return end;
}

int ledger_set_jsonl_end(ledger *l, int64_t done_seq, int64_t jsonl_end, errbuf *err)
{
    sqlite3_stmt *s = ledger_stmt(l, ST_SET_JSONL_END, err);
    if (!s)
        return -1;
    sqlite3_bind_int64(s, 1, done_seq);
    sqlite3_bind_int64(s, 2, jsonl_end);
    return step_done(l, s, "recording results file offsets", err);
}

/* ---- reading documents ----------------------------------------------------- */

const char *ledger_state_name(enum ledger_state s)
{
    switch (s) {
    case LEDGER_PENDING:
        return "pending";
    case LEDGER_DONE:
        return "done";
    case LEDGER_FAILED:
        return "failed";
    }
    return "?";
}

static const char *col_text(sqlite3_stmt *s, int col)
{
    return sqlite3_column_type(s, col) == SQLITE_NULL ? NULL
                                                      : (const char *)sqlite3_column_text(s, col);
}

/* Fills doc from a row of DOC_COLUMNS; strings point into the statement. */
static void fill_doc(sqlite3_stmt *s, ledger_doc *doc)
{
    doc->key = col_text(s, 0);
    doc->doc_id = col_text(s, 1);
    doc->source = col_text(s, 2);
    const char *state = col_text(s, 3);
    doc->state = !state                     ? LEDGER_PENDING
                 : !strcmp(state, "done")   ? LEDGER_DONE
                 : !strcmp(state, "failed") ? LEDGER_FAILED
                                            : LEDGER_PENDING;
    doc->attempts = sqlite3_column_int(s, 4);
    doc->error = col_text(s, 5);
    doc->content = col_text(s, 6);
    doc->reasoning = col_text(s, 7);
    doc->finish_reason = col_text(s, 8);
    doc->thinking_truncated = sqlite3_column_int(s, 9);
    doc->prompt_tokens = sqlite3_column_int(s, 10);
    doc->completion_tokens = sqlite3_column_int(s, 11);
    doc->seconds = sqlite3_column_double(s, 12);
    doc->finished_at = sqlite3_column_int64(s, 13);
    doc->run_id = sqlite3_column_int64(s, 14);
    doc->jsonl_end = sqlite3_column_int64(s, 15);
    doc->done_seq = sqlite3_column_int64(s, 16);
}

struct ledger_docs_iter {
    ledger *l;
    sqlite3_stmt *s;
};

int ledger_docs_open(ledger *l, enum ledger_state state, ledger_docs_iter **it, errbuf *err)
{
    *it = NULL;
    const char *sql = state == LEDGER_DONE
                          ? "SELECT " DOC_COLUMNS " FROM documents"
                            " WHERE config_hash IS ?2 AND done_seq IS NOT NULL ORDER BY done_seq"
                          : "SELECT " DOC_COLUMNS " FROM documents"
                            " WHERE state = ?1 AND config_hash IS ?2 ORDER BY seq";
    ledger_docs_iter *i = calloc(1, sizeof *i);
    if (!i)
        return errorf(err, "%s: out of memory", l->path);
    i->l = l;
    if (sqlite3_prepare_v2(l->db, sql, -1, &i->s, NULL) != SQLITE_OK) {
        free(i);
        return db_error(l, err, "reading documents");
    }
    if (state != LEDGER_DONE)
        sqlite3_bind_text(i->s, 1, ledger_state_name(state), -1, SQLITE_STATIC);
    sqlite3_bind_text(i->s, 2, l->config_hash, -1, SQLITE_TRANSIENT);
    *it = i;
    return 0;
}

int ledger_docs_next(ledger_docs_iter *it, ledger_doc *doc, errbuf *err)
{
    int rc = sqlite3_step(it->s);
    if (rc == SQLITE_DONE)
        return 0;
    if (rc != SQLITE_ROW)
        return db_error(it->l, err, "reading documents");
    fill_doc(it->s, doc);
    return 1;
}

void ledger_docs_close(ledger_docs_iter *it)
{
    if (!it)
        return;
    sqlite3_finalize(it->s);
    free(it);
}

int ledger_last_done(ledger *l, ledger_doc *doc, errbuf *err)
{
    sqlite3_stmt *s = ledger_stmt(l, ST_LAST_DONE, err);
    if (!s)
        return -1;
    sqlite3_bind_text(s, 1, l->config_hash, -1, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_DONE) {
        sqlite3_reset(s);
        return 0;
    }
    if (rc != SQLITE_ROW) {
        sqlite3_reset(s);
        return db_error(l, err, "reading the last done document");
    }
    fill_doc(s, doc);
    /* Copy the strings out so that no read statement stays open. */
    const char **fields[LAST_DONE_STRS] = {&doc->key,          &doc->doc_id,  &doc->source,
                                           &doc->error,        &doc->content, &doc->reasoning,
                                           &doc->finish_reason};
    for (int i = 0; i < LAST_DONE_STRS; i++) {
        free(l->last_done_strs[i]);
        l->last_done_strs[i] = *fields[i] ? strdup(*fields[i]) : NULL;
        *fields[i] = l->last_done_strs[i];
    }
    sqlite3_reset(s);
    return 1;
}

/* ---- status and maintenance ------------------------------------------------ */

/* A run's wall time in SQL over the runs table: the recorded seconds, or
 * for a run that did not end cleanly (killed, or still going) the time from
 * its start to its last finished document. */
#define RUN_SECONDS_SQL                                                                            \
    "(CASE WHEN ended IS NOT NULL THEN seconds ELSE max(0, coalesce((SELECT max(finished_at)"      \
    " FROM documents d WHERE d.run_id = runs.id AND d.state = 'done') - started, 0)) END)"

/* Fills r for run `id`: its record, and figures from the documents it
 * finished. 1 when the run exists, 0 when not, -1 on error. */
static int load_run(ledger *l, int64_t id, ledger_run_info *r, errbuf *err)
{
    memset(r, 0, sizeof *r);
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(l->db,
                           "SELECT id, started, ended, exit_status, " RUN_SECONDS_SQL
                           ", host, pid, backend, version FROM runs WHERE id = ?1",
                           -1, &s, NULL) != SQLITE_OK)
        return db_error(l, err, "reading runs");
    sqlite3_bind_int64(s, 1, id);
    int rc = sqlite3_step(s);
    if (rc != SQLITE_ROW) {
        sqlite3_finalize(s);
        return rc == SQLITE_DONE ? 0 : db_error(l, err, "reading runs");
    }
    r->id = sqlite3_column_int64(s, 0);
    r->started = (int64_t)sqlite3_column_double(s, 1);
    int ended = sqlite3_column_type(s, 2) != SQLITE_NULL;
    r->ended = ended ? (int64_t)sqlite3_column_double(s, 2) : 0;
    r->exit_status = ended ? sqlite3_column_int(s, 3) : -1;
    r->seconds = sqlite3_column_double(s, 4);
    const char *t;
    if ((t = col_text(s, 5)))
        snprintf(r->host, sizeof r->host, "%s", t);
    r->pid = sqlite3_column_int64(s, 6);
    if ((t = col_text(s, 7)))
        snprintf(r->backend, sizeof r->backend, "%s", t);
    if ((t = col_text(s, 8)))
        snprintf(r->version, sizeof r->version, "%s", t);
    sqlite3_finalize(s);

    if (sqlite3_prepare_v2(l->db,
                           "SELECT state, count(*), total(prompt_tokens), total(completion_tokens)"
                           " FROM documents WHERE run_id = ?1 GROUP BY state",
                           -1, &s, NULL) != SQLITE_OK)
        return db_error(l, err, "reading runs");
    sqlite3_bind_int64(s, 1, id);
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *state = (const char *)sqlite3_column_text(s, 0);
        if (!strcmp(state, "done")) {
            r->docs_done = sqlite3_column_int64(s, 1);
            r->prompt_tokens = (int64_t)sqlite3_column_double(s, 2);
            r->completion_tokens = (int64_t)sqlite3_column_double(s, 3);
        } else if (!strcmp(state, "failed")) {
            r->docs_failed = sqlite3_column_int64(s, 1);
        }
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return db_error(l, err, "reading runs");
    return 1;
}

static int query_id(ledger *l, const char *sql, int64_t *id, errbuf *err)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(l->db, sql, -1, &s, NULL) != SQLITE_OK)
        return db_error(l, err, "reading counts");
    int rc = sqlite3_step(s);
    *id = rc == SQLITE_ROW ? sqlite3_column_int64(s, 0) : 0;
    sqlite3_finalize(s);
    if (rc != SQLITE_ROW && rc != SQLITE_DONE)
        return db_error(l, err, "reading counts");
    return 0;
}

static int counts_locked(ledger *l, ledger_counts_t *c, errbuf *err)
{
    sqlite3_stmt *s = NULL;
    if (sqlite3_prepare_v2(l->db,
                           "SELECT state, count(*), total(prompt_tokens), total(completion_tokens),"
                           " config_hash IS ?1 FROM documents GROUP BY 5, 1",
                           -1, &s, NULL) != SQLITE_OK)
        return db_error(l, err, "reading counts");
    sqlite3_bind_text(s, 1, l->config_hash, -1, SQLITE_STATIC);
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        const char *state = (const char *)sqlite3_column_text(s, 0);
        int64_t n = sqlite3_column_int64(s, 1);
        if (!sqlite3_column_int(s, 4)) {
            c->other_configs += n;
        } else if (!strcmp(state, "pending")) {
            c->pending = n;
            c->pending_prompt_tokens = (int64_t)sqlite3_column_double(s, 2);
        } else if (!strcmp(state, "done")) {
            c->done = n;
            c->done_prompt_tokens = (int64_t)sqlite3_column_double(s, 2);
            c->done_completion_tokens = (int64_t)sqlite3_column_double(s, 3);
        } else if (!strcmp(state, "failed")) {
            c->failed = n;
        }
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_DONE)
        return db_error(l, err, "reading counts");

    int64_t last_id, pace_id;
    ledger_run_info last;
    if (query_id(l, "SELECT max(id) FROM runs", &last_id, err) < 0)
        return -1;
    rc = last_id ? load_run(l, last_id, &last, err) : 0;
    if (rc < 0)
        return -1;
    if (rc == 1) {
        c->has_run = 1;
        c->run_id = last.id;
        c->run_started = last.started;
        c->run_ended = last.ended;
        c->run_exit_status = last.exit_status;
        c->run_docs_done = last.docs_done;
        c->run_docs_failed = last.docs_failed;
        c->run_prompt_tokens = last.prompt_tokens;
        c->run_completion_tokens = last.completion_tokens;
        c->run_doc_seconds = last.seconds;
        memcpy(c->run_host, last.host, sizeof c->run_host);
        c->run_pid = last.pid;
        memcpy(c->run_backend, last.backend, sizeof c->run_backend);
        memcpy(c->run_version, last.version, sizeof c->run_version);
    }
    /* Runs of this configuration, each timed as load_run times one. */
    if (sqlite3_prepare_v2(l->db,
                           "SELECT count(*), total(" RUN_SECONDS_SQL ") FROM runs"
                           " WHERE config_hash IS ?1",
                           -1, &s, NULL) != SQLITE_OK)
        return db_error(l, err, "reading runs");
    sqlite3_bind_text(s, 1, l->config_hash, -1, SQLITE_STATIC);
    rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        c->config_runs = sqlite3_column_int64(s, 0);
        c->config_run_seconds = sqlite3_column_double(s, 1);
    }
    sqlite3_finalize(s);
    if (rc != SQLITE_ROW)
        return db_error(l, err, "reading runs");
    if (query_id(l,
                 "SELECT run_id FROM documents WHERE done_seq IS NOT NULL AND run_id IS NOT NULL"
                 " ORDER BY done_seq DESC LIMIT 1",
                 &pace_id, err) < 0)
        return -1;
    if (pace_id == last_id && c->has_run) {
        c->has_pace = last.docs_done > 0;
        c->pace = last;
    } else if (pace_id) {
        rc = load_run(l, pace_id, &c->pace, err);
        if (rc < 0)
            return -1;
        c->has_pace = rc == 1 && c->pace.docs_done > 0;
    }
    return 0;
}

int ledger_counts(ledger *l, ledger_counts_t *c, errbuf *err)
{
    memset(c, 0, sizeof *c);
    /* One read transaction so that all figures come from the same snapshot. */
    int own_tx = sqlite3_get_autocommit(l->db);
    if (own_tx && exec(l, "BEGIN", "reading counts", err) < 0)
        return -1;
    int rc = counts_locked(l, c, err);
    if (own_tx)
        sqlite3_exec(l->db, rc == 0 ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* Runs sql with ?1 bound to the current configuration. */
static int exec_scoped(ledger *l, const char *sql, errbuf *err)
{
    sqlite3_stmt *s;
    if (sqlite3_prepare_v2(l->db, sql, -1, &s, NULL) != SQLITE_OK)
        return db_error(l, err, "retrying failed documents");
    sqlite3_bind_text(s, 1, l->config_hash, -1, SQLITE_STATIC);
    int rc = step_done(l, s, "retrying failed documents", err);
    sqlite3_finalize(s);
    return rc;
}

int ledger_retry_failed(ledger *l, int64_t *n, errbuf *err)
{
    *n = 0;
    int own_tx = !l->in_batch;
    if (own_tx && exec(l, "BEGIN IMMEDIATE", "retrying failed documents", err) < 0)
        return -1;
    if (exec_scoped(l,
                    "DELETE FROM documents WHERE state = 'failed' AND prompt_ids IS NULL"
                    " AND config_hash IS ?1",
                    err) < 0)
        goto fail;
    *n = sqlite3_changes(l->db);
    if (exec_scoped(
            l,
            "UPDATE documents SET state = 'pending', error = NULL, content = NULL,"
            " reasoning = NULL, finish_reason = NULL, thinking_truncated = 0,"
            " completion_tokens = 0, seconds = NULL, finished_at = NULL, run_id = NULL,"
            " jsonl_end = NULL, done_seq = NULL WHERE state = 'failed' AND config_hash IS ?1",
            err) < 0)
        goto fail;
    *n += sqlite3_changes(l->db);
    if (own_tx && exec(l, "COMMIT", "retrying failed documents", err) < 0)
        goto fail;
    return 0;
fail:
    if (own_tx)
        sqlite3_exec(l->db, "ROLLBACK", NULL, NULL, NULL);
    *n = 0;
    return -1;
}

const char *ledger_config_hash(const ledger *l)
{
    return l->config_hash;
}

int ledger_config_gen(const ledger *l)
{
    return l->config_gen;
}
