/*
 * job.c - the job file: YAML through libyaml's document API, validated key
 * by key against the schema in job.h.
 *
 * The loader builds libyaml's node tree (aliases resolved), and each section
 * of the schema is read by one function that first checks the mapping's keys
 * against the section's list (unknown or duplicate keys are errors) and then
 * reads each value with a typed getter. Every getter reports errors at the
 * node's own start mark, so "file:line:col" points at the offending value,
 * and at the key for unknown keys. Defaults that depend on other settings
 * (sampling per mode, output paths from the job name) are filled in last.
 */
#include "job.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>
#include <yaml.h>

/* A piece of the user template: literal text (a slice of job->user) or a
 * placeholder's field name. */
struct job_template_part {
    char *name; /* NULL for literal text */
    size_t off, len;
};

/* ---- small helpers ---------------------------------------------------- */

static char *xstrdup(const char *s)
{
    strbuf sb = STRBUF_INIT;
    sb_adds(&sb, s ? s : "");
    return sb_detach(&sb, NULL);
}

static char *xstrndup(const char *s, size_t n)
{
    strbuf sb = STRBUF_INIT;
    sb_add(&sb, s, n);
    return sb_detach(&sb, NULL);
}

/* Joins dir and a path from the job file; absolute paths stay as they are. */
static char *resolve_path(const char *dir, const char *p)
{
    if (p[0] == '/' || !strcmp(dir, "."))
        return xstrdup(p);
    strbuf sb = STRBUF_INIT;
    sb_addf(&sb, "%s/%s", dir, p);
    return sb_detach(&sb, NULL);
}

const char *job_mode_name(enum job_mode m)
{
    return m == JOB_THINKING ? "thinking" : "non-thinking";
}

static const char *const format_names[] = {"auto",    "jsonl",  "openai-batch", "archive",
                                           "folder",  "text",   NULL};
static const char *const mode_names[] = {"non-thinking", "thinking", NULL};
static const char *const too_long_names[] = {"truncate", "skip", "fail", NULL};
static const char *const output_format_names[] = {"jsonl", "openai-batch", NULL};
static const char *const backend_names[] = {"auto", "cpu", "cuda", NULL};
static const char *const kv_names[] = {"f16", "int8", NULL};
static const char *const progress_names[] = {"auto", "bar", "json", "none", NULL};

const char *job_format_name(enum job_input_format f)
{
    return format_names[f];
}

const char *job_too_long_name(enum job_too_long t)
{
    return too_long_names[t];
}

/* ---- sizes and durations ---------------------------------------------- */

int job_parse_size(const char *s, size_t *bytes, errbuf *err)
{
    static const struct {
        const char *unit;
        double mult;
    } units[] = {
        {"", 1},          {"b", 1},           {"k", 1024.0},      {"kb", 1e3},
        {"kib", 1024.0},  {"m", 1048576.0},   {"mb", 1e6},        {"mib", 1048576.0},
        {"g", 1073741824.0}, {"gb", 1e9},     {"gib", 1073741824.0}, {"t", 1099511627776.0},
        {"tb", 1e12},     {"tib", 1099511627776.0},
    };
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || errno || !isfinite(v) || v < 0 || s[0] == '-' || s[0] == '+' ||
        !strncasecmp(s, "0x", 2))
        return errorf(err, "'%s' is not a size (like 22GiB, 20000MiB or 1048576)", s);
    while (*end == ' ')
        end++;
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(end, units[i].unit))
            continue;
        double b = v * units[i].mult;
        if (b >= 9.2e18)
            return errorf(err, "size '%s' is too large", s);
        if (b != floor(b))
            return errorf(err, "size '%s' is not a whole number of bytes", s);
        *bytes = (size_t)b;
        return 0;
    }
    return errorf(err, "'%s' has an unknown size unit (use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)",
                  s);
}

int job_parse_duration(const char *s, double *seconds, errbuf *err)
{
    const char *p = s;
    double total = 0;
    int n_parts = 0;
    while (*p) {
        char *end;
        if (!(*p >= '0' && *p <= '9') && *p != '.')
            goto bad;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || errno || !isfinite(v))
            goto bad;
        p = end;
        double mult;
        switch (*p) {
        case 'd': mult = 86400; p++; break;
        case 'h': mult = 3600; p++; break;
        case 'm': mult = 60; p++; break;
        case 's': mult = 1; p++; break;
        case '\0':
            if (n_parts)
                goto bad; /* "1h30" is ambiguous */
            mult = 1;
            break;
        default: goto bad;
        }
        total += v * mult;
        n_parts++;
    }
    if (!n_parts)
        goto bad;
    *seconds = total;
    return 0;
bad:
    return errorf(err, "'%s' is not a duration (like 6h, 90m, 1h30m or 3600s)", s);
}

/* ---- YAML access with positions ----------------------------------------- */

typedef struct yctx {
    const char *path;
    yaml_document_t *doc;
    errbuf *err;
} yctx;

__attribute__((format(printf, 3, 4))) static int yerr(yctx *y, const yaml_node_t *n,
                                                      const char *fmt, ...)
{
    char msg[768];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    int line = n ? (int)n->start_mark.line + 1 : 1;
    int col = n ? (int)n->start_mark.column + 1 : 1;
    return errorf(y->err, "%s:%d:%d: %s", y->path, line, col, msg);
}

static const char *node_kind(const yaml_node_t *n)
{
    switch (n->type) {
    case YAML_MAPPING_NODE: return "a mapping";
    case YAML_SEQUENCE_NODE: return "a list";
    default: return "a scalar";
    }
}

static const char *scalar(const yaml_node_t *n)
{
    return (const char *)n->data.scalar.value;
}

static int is_plain(const yaml_node_t *n)
{
    return n->type == YAML_SCALAR_NODE && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE;
}

static int is_null(const yaml_node_t *n)
{
    if (!is_plain(n))
        return 0;
    const char *s = scalar(n);
    return !*s || !strcmp(s, "~") || !strcmp(s, "null") || !strcmp(s, "Null") ||
           !strcmp(s, "NULL");
}

/* A scalar that should be a number but was quoted or is text. */
static int want_scalar(yctx *y, const yaml_node_t *n, const char *what, const char *type)
{
    if (n->type != YAML_SCALAR_NODE)
        return yerr(y, n, "%s: expected %s, got %s", what, type, node_kind(n));
    if (!is_plain(n))
        return yerr(y, n, "%s: expected %s, got the quoted string \"%s\"", what, type,
                    scalar(n));
    return 0;
}

static int get_str(yctx *y, const yaml_node_t *n, const char *what, char **out)
{
    if (!n || is_null(n))
        return 0;
    if (n->type != YAML_SCALAR_NODE)
        return yerr(y, n, "%s: expected a string, got %s", what, node_kind(n));
    if (strlen(scalar(n)) != n->data.scalar.length)
        return yerr(y, n, "%s: the string holds a NUL character", what);
    free(*out);
    *out = xstrdup(scalar(n));
    return 0;
}

static int get_int(yctx *y, const yaml_node_t *n, const char *what, long long lo, long long hi,
                   long long *out)
{
    if (!n || is_null(n))
        return 0;
    if (want_scalar(y, n, what, "an integer"))
        return -1;
    const char *s = scalar(n);
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (end == s || *end) {
        if (strchr(s, '.') || strchr(s, 'e') || strchr(s, 'E')) {
            double d = strtod(s, &end);
            if (end != s && !*end && d == floor(d) && fabs(d) < 9e18)
                v = (long long)d, errno = 0;
            else
                return yerr(y, n, "%s: expected an integer, got '%s'", what, s);
        } else {
            return yerr(y, n, "%s: expected an integer, got '%s'", what, s);
        }
    }
    if (errno == ERANGE || v < lo || v > hi)
        return yerr(y, n, "%s: %s is out of range (%lld to %lld)", what, s, lo, hi);
    *out = v;
    return 0;
}

static int get_int32(yctx *y, const yaml_node_t *n, const char *what, long long lo,
                     long long hi, int *out)
{
    long long v = *out;
    if (get_int(y, n, what, lo, hi, &v))
        return -1;
    *out = (int)v;
    return 0;
}

static int get_double(yctx *y, const yaml_node_t *n, const char *what, double lo, double hi,
                      int lo_open, double *out)
{
    if (!n || is_null(n))
        return 0;
    if (want_scalar(y, n, what, "a number"))
        return -1;
    const char *s = scalar(n);
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (end == s || *end || !isfinite(v) || !strncasecmp(s, "0x", 2) || errno == ERANGE)
        return yerr(y, n, "%s: expected a number, got '%s'", what, s);
    if (v < lo || v > hi || (lo_open && v == lo))
        return yerr(y, n, "%s: %s is out of range (%s%g to %g)", what, s,
                    lo_open ? "more than " : "", lo, hi);
    *out = v;
    return 0;
}

static int get_bool(yctx *y, const yaml_node_t *n, const char *what, int *out)
{
    if (!n || is_null(n))
        return 0;
    if (want_scalar(y, n, what, "true or false"))
        return -1;
    static const char *const yes[] = {"true", "yes", "on"}, *const no[] = {"false", "no", "off"};
    for (int i = 0; i < 3; i++) {
        if (!strcasecmp(scalar(n), yes[i]))
            return *out = 1, 0;
        if (!strcasecmp(scalar(n), no[i]))
            return *out = 0, 0;
    }
    return yerr(y, n, "%s: expected true or false, got '%s'", what, scalar(n));
}

static int get_enum(yctx *y, const yaml_node_t *n, const char *what,
                    const char *const *names, int *out)
{
    if (!n || is_null(n))
        return 0;
    if (n->type != YAML_SCALAR_NODE)
        return yerr(y, n, "%s: expected one of the names below, got %s", what, node_kind(n));
    for (int i = 0; names[i]; i++)
        if (!strcmp(scalar(n), names[i]))
            return *out = i, 0;
    strbuf sb = STRBUF_INIT;
    for (int i = 0; names[i]; i++)
        sb_addf(&sb, "%s%s", i ? ", " : "", names[i]);
    yerr(y, n, "%s: '%s' is not one of: %s", what, scalar(n), sb.buf);
    sb_release(&sb);
    return -1;
}

static int get_size(yctx *y, const yaml_node_t *n, const char *what, size_t lo, size_t hi,
                    size_t *out)
{
    if (!n || is_null(n))
        return 0;
    if (n->type != YAML_SCALAR_NODE)
        return yerr(y, n, "%s: expected a size, got %s", what, node_kind(n));
    errbuf e;
    size_t v;
    if (job_parse_size(scalar(n), &v, &e))
        return yerr(y, n, "%s: %s", what, e.msg);
    if (v < lo || v > hi)
        return yerr(y, n, "%s: %s is out of range (%zu to %zu bytes)", what, scalar(n), lo, hi);
    *out = v;
    return 0;
}

static int get_duration(yctx *y, const yaml_node_t *n, const char *what, double *out)
{
    if (!n || is_null(n))
        return 0;
    if (n->type != YAML_SCALAR_NODE)
        return yerr(y, n, "%s: expected a duration, got %s", what, node_kind(n));
    errbuf e;
    if (job_parse_duration(scalar(n), out, &e))
        return yerr(y, n, "%s: %s", what, e.msg);
    return 0;
}

/*
 * Checks the keys of mapping map (at what, "" for the top) against keys[]
 * and stores each value node in vals[i] (NULL when absent). Unknown and
 * duplicate keys are errors at the key.
 */
static int get_map(yctx *y, yaml_node_t *map, const char *what, const char *const *keys,
                   yaml_node_t **vals)
{
    int n_keys = 0;
    while (keys[n_keys])
        n_keys++;
    for (int i = 0; i < n_keys; i++)
        vals[i] = NULL;
    if (map->type != YAML_MAPPING_NODE)
        return yerr(y, map, "%s: expected a mapping (key: value lines), got %s",
                    *what ? what : "the job", node_kind(map));
    for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top;
         p++) {
        yaml_node_t *k = yaml_document_get_node(y->doc, p->key);
        yaml_node_t *v = yaml_document_get_node(y->doc, p->value);
        if (k->type != YAML_SCALAR_NODE)
            return yerr(y, k, "%s%skeys must be names, got %s", what, *what ? ": " : "",
                        node_kind(k));
        int found = -1;
        for (int i = 0; i < n_keys; i++)
            if (!strcmp(scalar(k), keys[i]))
                found = i;
        if (found < 0) {
            strbuf sb = STRBUF_INIT;
            for (int i = 0; i < n_keys; i++)
                sb_addf(&sb, "%s%s", i ? ", " : "", keys[i]);
            yerr(y, k, "unknown key '%s%s%s' (expected one of: %s)", what, *what ? "." : "",
                 scalar(k), sb.buf);
            sb_release(&sb);
            return -1;
        }
        if (vals[found]) {
            yaml_node_t *first = vals[found];
            return yerr(y, k, "duplicate key '%s%s%s' (first value at line %d)", what,
                        *what ? "." : "", scalar(k), (int)first->start_mark.line + 1);
        }
        vals[found] = v;
    }
    return 0;
}

/* A required value: present and not null. */
static int need(yctx *y, yaml_node_t *map, yaml_node_t *v, const char *what)
{
    if (!v)
        return yerr(y, map, "missing required key '%s'", what);
    if (is_null(v))
        return yerr(y, v, "%s: a value is required", what);
    return 0;
}

/* ---- the user template -------------------------------------------------- */

static int valid_name_char(char c, int first)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
           (!first && ((c >= '0' && c <= '9') || c == '.' || c == '-'));
}

static void add_part(job *j, char *name, size_t off, size_t len)
{
    j->tmpl = realloc(j->tmpl, (size_t)(j->n_tmpl + 1) * sizeof *j->tmpl);
    if (!j->tmpl)
        abort();
    j->tmpl[j->n_tmpl++] = (struct job_template_part){name, off, len};
}

/* Splits j->user into literal parts and {{name}} placeholders. */
static int parse_template(yctx *y, job *j, const yaml_node_t *n)
{
    const char *s = j->user;
    size_t len = strlen(s), lit = 0, i = 0;
    int n_fields = 0;
    while (i < len) {
        if (s[i] != '{' || s[i + 1] != '{') {
            i++;
            continue;
        }
        size_t open = i;
        size_t k = i + 2;
        while (s[k] == ' ')
            k++;
        size_t name_start = k;
        while (s[k] && valid_name_char(s[k], k == name_start))
            k++;
        size_t name_end = k;
        while (s[k] == ' ')
            k++;
        if (name_end == name_start || s[k] != '}' || s[k + 1] != '}') {
            const char *close = strstr(s + open + 2, "}}");
            if (!close)
                return yerr(y, n,
                            "prompt.user: '{{' at character %zu of the template is never "
                            "closed with '}}'",
                            open + 1);
            return yerr(y, n,
                        "prompt.user: '%.*s' at character %zu of the template is not a "
                        "placeholder (use {{text}}, {{id}}, {{source}} or {{field_name}})",
                        (int)(close + 2 - (s + open) > 60 ? 60 : close + 2 - (s + open)),
                        s + open, open + 1);
        }
        if (open > lit)
            add_part(j, NULL, lit, open - lit);
        add_part(j, xstrndup(s + name_start, name_end - name_start), open, k + 2 - open);
        n_fields++;
        i = lit = k + 2;
    }
    if (len > lit)
        add_part(j, NULL, lit, len - lit);
    if (!n_fields)
        return yerr(y, n,
                    "prompt.user: the template has no placeholder, so every document would get "
                    "the same prompt (put {{text}} where the document goes)");
    return 0;
}

size_t job_user_prefix_len(const job *j)
{
    return j->n_tmpl && !j->tmpl[0].name ? j->tmpl[0].len : 0;
}

/* Looks up a dotted name in a JSON object: the whole name first (keys may
 * hold dots), then segment by segment. */
static const json_t *lookup_field(const json_t *fields, const char *name)
{
    if (!fields || !json_is_object(fields))
        return NULL;
    const json_t *v = json_object_get(fields, name);
    if (v)
        return v;
    const char *dot = strchr(name, '.');
    if (!dot)
        return NULL;
    char head[256];
    size_t n = (size_t)(dot - name);
    if (n >= sizeof head)
        return NULL;
    memcpy(head, name, n);
    head[n] = '\0';
    return lookup_field(json_object_get(fields, head), dot + 1);
}

int job_render_user(const job *j, const char *text, size_t text_len, const char *id,
                    const char *source, const json_t *fields, strbuf *out, errbuf *err)
{
    for (int i = 0; i < j->n_tmpl; i++) {
        const struct job_template_part *p = &j->tmpl[i];
        if (!p->name) {
            sb_add(out, j->user + p->off, p->len);
        } else if (!strcmp(p->name, "text")) {
            sb_add(out, text ? text : "", text ? text_len : 0);
        } else if (!strcmp(p->name, "id")) {
            sb_adds(out, id ? id : "");
        } else if (!strcmp(p->name, "source")) {
            sb_adds(out, source ? source : "");
        } else {
            const json_t *v = lookup_field(fields, p->name);
            if (!v)
                return errorf(err, "the prompt template uses {{%s}} but the document has no "
                                   "field '%s'",
                              p->name, p->name);
            if (json_is_string(v)) {
                sb_add(out, json_string_value(v), json_string_length(v));
            } else if (!json_is_null(v)) {
                char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
                if (s)
                    sb_adds(out, s);
                free(s);
            }
        }
    }
    return 0;
}

/* ---- sections ------------------------------------------------------------ */

static int parse_input(yctx *y, job *j, yaml_node_t *n, int index, job_input *in)
{
    char what[64];
    snprintf(what, sizeof what, "inputs[%d]", index);
    in->text_field = xstrdup("text");
    in->max_doc_bytes = JOB_DEFAULT_MAX_DOC_BYTES;
    yaml_node_t *path_node = n, *include = NULL;
    if (n->type == YAML_MAPPING_NODE) {
        static const char *const keys[] = {"path",     "format",  "id_field", "text_field",
                                           "include",  "max_doc_bytes", NULL};
        yaml_node_t *v[6];
        if (get_map(y, n, what, keys, v))
            return -1;
        char key[96];
        snprintf(key, sizeof key, "%s.path", what);
        if (need(y, n, v[0], key))
            return -1;
        path_node = v[0];
        int fmt = JOB_FORMAT_AUTO;
        snprintf(key, sizeof key, "%s.format", what);
        if (get_enum(y, v[1], key, format_names, &fmt))
            return -1;
        in->format = (enum job_input_format)fmt;
        snprintf(key, sizeof key, "%s.id_field", what);
        if (get_str(y, v[2], key, &in->id_field))
            return -1;
        snprintf(key, sizeof key, "%s.text_field", what);
        if (get_str(y, v[3], key, &in->text_field))
            return -1;
        if (!in->text_field[0])
            return yerr(y, v[3], "%s: must not be empty", key);
        if (in->id_field && !in->id_field[0])
            return yerr(y, v[2], "%s.id_field: must not be empty", what);
        snprintf(key, sizeof key, "%s.max_doc_bytes", what);
        if (get_size(y, v[5], key, 1, (size_t)1 << 40, &in->max_doc_bytes))
            return -1;
        include = v[4] && !is_null(v[4]) ? v[4] : NULL;
    } else if (n->type != YAML_SCALAR_NODE) {
        return yerr(y, n, "%s: expected a path or a mapping with 'path', got %s", what,
                    node_kind(n));
    }
    char key[96];
    snprintf(key, sizeof key, "%s.path", what);
    if (path_node->type != YAML_SCALAR_NODE || is_null(path_node))
        return yerr(y, path_node, "%s: expected a path", key);
    if (get_str(y, path_node, key, &in->spec))
        return -1;
    in->line = (int)path_node->start_mark.line + 1;
    in->column = (int)path_node->start_mark.column + 1;
    in->path = resolve_path(j->dir, in->spec);
    in->is_glob = strpbrk(in->spec, "*?[") != NULL;
    if (in->is_glob && in->format == JOB_FORMAT_FOLDER)
        return yerr(y, path_node, "%s: a glob cannot have format: folder", key);

    if (include) {
        snprintf(key, sizeof key, "%s.include", what);
        if (include->type == YAML_SCALAR_NODE) {
            in->include = calloc(1, sizeof *in->include);
            in->n_include = 0;
            if (get_str(y, include, key, &in->include[0]))
                return -1;
            in->n_include = 1;
        } else if (include->type == YAML_SEQUENCE_NODE) {
            int count = (int)(include->data.sequence.items.top - include->data.sequence.items.start);
            in->include = calloc((size_t)count + 1, sizeof *in->include);
            for (int i = 0; i < count; i++) {
                yaml_node_t *p =
                    yaml_document_get_node(y->doc, include->data.sequence.items.start[i]);
                if (p->type != YAML_SCALAR_NODE || is_null(p))
                    return yerr(y, p, "%s[%d]: expected a pattern like \"*.txt\", got %s", key,
                                i, is_null(p) ? "nothing" : node_kind(p));
                if (get_str(y, p, key, &in->include[i]))
                    return -1;
                in->n_include = i + 1;
            }
            if (!count)
                return yerr(y, include, "%s: the list is empty, so nothing would be read", key);
        } else {
            return yerr(y, include, "%s: expected a list of patterns, got %s", key,
                        node_kind(include));
        }
    } else {
        /* Text formats; binary files would only become failed documents. */
        static const char *const defaults[] = {"*.txt", "*.md",  "*.markdown", "*.rst",
                                               "*.text", "*.org", "*.adoc"};
        in->n_include = (int)(sizeof defaults / sizeof defaults[0]);
        in->include = calloc((size_t)in->n_include, sizeof *in->include);
        for (int i = 0; i < in->n_include; i++)
            in->include[i] = xstrdup(defaults[i]);
    }
    return 0;
}

static int parse_inputs(yctx *y, job *j, yaml_node_t *root, yaml_node_t *n)
{
    if (need(y, root, n, "inputs"))
        return -1;
    yaml_node_item_t *items = NULL;
    int count = 1;
    if (n->type == YAML_SEQUENCE_NODE) {
        items = n->data.sequence.items.start;
        count = (int)(n->data.sequence.items.top - items);
        if (!count)
            return yerr(y, n, "inputs: the list is empty; give at least one path");
    }
    j->inputs = calloc((size_t)count, sizeof *j->inputs);
    for (int i = 0; i < count; i++) {
        yaml_node_t *item = items ? yaml_document_get_node(y->doc, items[i]) : n;
        j->n_inputs = i + 1;
        if (parse_input(y, j, item, i, &j->inputs[i]))
            return -1;
    }
    return 0;
}

static int parse_prompt(yctx *y, job *j, yaml_node_t *root, yaml_node_t *n,
                        yaml_node_t **budget_node)
{
    if (need(y, root, n, "prompt"))
        return -1;
    static const char *const keys[] = {"system", "user", "mode", "thinking_budget", NULL};
    yaml_node_t *v[4];
    if (get_map(y, n, "prompt", keys, v))
        return -1;
    if (get_str(y, v[0], "prompt.system", &j->system))
        return -1;
    if (need(y, n, v[1], "prompt.user") || get_str(y, v[1], "prompt.user", &j->user))
        return -1;
    if (parse_template(y, j, v[1]))
        return -1;
    int mode = JOB_NON_THINKING;
    if (get_enum(y, v[2], "prompt.mode", mode_names, &mode))
        return -1;
    j->mode = (enum job_mode)mode;
    if (get_int32(y, v[3], "prompt.thinking_budget", 0, 1 << 20, &j->thinking_budget))
        return -1;
    *budget_node = v[3];
    if (j->thinking_budget && j->mode != JOB_THINKING)
        return yerr(y, v[3], "prompt.thinking_budget: only used with mode: thinking");
    return 0;
}

static int parse_sampling(yctx *y, job *j, yaml_node_t *n, yaml_node_t **max_new_node)
{
    job_sampling *s = &j->sampling;
    /* Qwen3's recommended settings per mode (model card). */
    if (j->mode == JOB_THINKING)
        *s = (job_sampling){.temperature = 0.6, .top_p = 0.95, .top_k = 20, .max_new_tokens = 4096};
    else
        *s = (job_sampling){.temperature = 0.7, .top_p = 0.8, .top_k = 20, .max_new_tokens = 1024};
    *max_new_node = NULL;
    if (!n || is_null(n))
        return 0;
    static const char *const keys[] = {"temperature", "top_p", "top_k", "min_p",
                                       "presence_penalty", "seed", "max_new_tokens", NULL};
    yaml_node_t *v[7];
    if (get_map(y, n, "sampling", keys, v))
        return -1;
    long long seed = 0;
    if (get_double(y, v[0], "sampling.temperature", 0, 2, 0, &s->temperature) ||
        get_double(y, v[1], "sampling.top_p", 0, 1, 1, &s->top_p) ||
        get_int32(y, v[2], "sampling.top_k", 0, 1000000, &s->top_k) ||
        get_double(y, v[3], "sampling.min_p", 0, 1, 0, &s->min_p) ||
        get_double(y, v[4], "sampling.presence_penalty", 0, 2, 0, &s->presence_penalty) ||
        get_int(y, v[5], "sampling.seed", 0, INT64_MAX, &seed) ||
        get_int32(y, v[6], "sampling.max_new_tokens", 1, 1 << 20, &s->max_new_tokens))
        return -1;
    s->seed = (uint64_t)seed;
    *max_new_node = v[6];
    return 0;
}

static int parse_batching(yctx *y, job *j, yaml_node_t *n, yaml_node_t **ctx_node)
{
    j->max_batch_tokens = 131072;
    j->max_context = 32768;
    j->too_long = JOB_TOO_LONG_TRUNCATE;
    j->max_seqs = 0;
    *ctx_node = NULL;
    if (!n || is_null(n))
        return 0;
    static const char *const keys[] = {"max_batch_tokens", "max_context", "too_long", "max_seqs",
                                       NULL};
    yaml_node_t *v[4];
    if (get_map(y, n, "batching", keys, v))
        return -1;
    long long mbt = j->max_batch_tokens;
    int too_long = 0;
    if (get_int(y, v[0], "batching.max_batch_tokens", 16, 1LL << 24, &mbt) ||
        get_int32(y, v[1], "batching.max_context", 64, 1 << 20, &j->max_context) ||
        get_enum(y, v[2], "batching.too_long", too_long_names, &too_long) ||
        get_int32(y, v[3], "batching.max_seqs", 0, 65536, &j->max_seqs))
        return -1;
    j->max_batch_tokens = mbt;
    j->too_long = (enum job_too_long)too_long;
    *ctx_node = v[1];
    return 0;
}

static int parse_output(yctx *y, job *j, yaml_node_t *n)
{
    char *ledger = NULL, *jsonl = NULL;
    int fmt = JOB_OUTPUT_JSONL;
    if (n && !is_null(n)) {
        static const char *const keys[] = {"ledger", "jsonl", "format", "include_reasoning",
                                           NULL};
        yaml_node_t *v[4];
        if (get_map(y, n, "output", keys, v))
            return -1;
        if (get_str(y, v[0], "output.ledger", &ledger) ||
            get_str(y, v[1], "output.jsonl", &jsonl) ||
            get_enum(y, v[2], "output.format", output_format_names, &fmt) ||
            get_bool(y, v[3], "output.include_reasoning", &j->include_reasoning)) {
            free(ledger);
            free(jsonl);
            return -1;
        }
        if ((ledger && !*ledger) || (jsonl && !*jsonl)) {
            yerr(y, ledger && !*ledger ? v[0] : v[1], "output.%s: must not be empty",
                 ledger && !*ledger ? "ledger" : "jsonl");
            free(ledger);
            free(jsonl);
            return -1;
        }
    }
    strbuf sb = STRBUF_INIT;
    if (!ledger) {
        sb_addf(&sb, "%s.ledger.sqlite", j->name);
        ledger = sb_detach(&sb, NULL);
    }
    if (!jsonl) {
        sb_addf(&sb, "%s.jsonl", j->name);
        jsonl = sb_detach(&sb, NULL);
    }
    j->ledger_path = resolve_path(j->dir, ledger);
    j->jsonl_path = resolve_path(j->dir, jsonl);
    free(ledger);
    free(jsonl);
    j->output_format = (enum job_output_format)fmt;
    return 0;
}

static int parse_runtime(yctx *y, job *j, yaml_node_t *n)
{
    j->backend = ENG_BACKEND_AUTO;
    j->kv_cache = ENG_KV_F16;
    j->progress = JOB_PROGRESS_AUTO;
    if (!n || is_null(n))
        return 0;
    static const char *const keys[] = {"backend", "gpu_memory", "kv_cache", "threads",
                                       "max_run_time", "progress", NULL};
    yaml_node_t *v[6];
    if (get_map(y, n, "runtime", keys, v))
        return -1;
    int backend = 0, kv = 0, progress = 0;
    if (get_enum(y, v[0], "runtime.backend", backend_names, &backend) ||
        get_size(y, v[1], "runtime.gpu_memory", 0, (size_t)1 << 50, &j->gpu_memory) ||
        get_enum(y, v[2], "runtime.kv_cache", kv_names, &kv) ||
        get_int32(y, v[3], "runtime.threads", 0, 4096, &j->threads) ||
        get_duration(y, v[4], "runtime.max_run_time", &j->max_run_time) ||
        get_enum(y, v[5], "runtime.progress", progress_names, &progress))
        return -1;
    if (v[1] && !is_null(v[1]) && j->gpu_memory && j->gpu_memory < ((size_t)256 << 20))
        return yerr(y, v[1], "runtime.gpu_memory: %s is too small (at least 256MiB, or 0 for "
                             "all free memory)",
                    scalar(v[1]));
    j->backend = backend == 1 ? ENG_BACKEND_CPU : backend == 2 ? ENG_BACKEND_CUDA
                                                               : ENG_BACKEND_AUTO;
    j->kv_cache = kv ? ENG_KV_INT8 : ENG_KV_F16;
    j->progress = (enum job_progress)progress;
    return 0;
}

/* Sets path, dir and name from the job file's path. */
static void set_names(job *j, const char *path)
{
    j->path = xstrdup(path);
    const char *slash = strrchr(path, '/');
    if (!slash)
        j->dir = xstrdup(".");
    else if (slash == path)
        j->dir = xstrdup("/");
    else
        j->dir = xstrndup(path, (size_t)(slash - path));
    const char *base = slash ? slash + 1 : path;
    size_t n = strlen(base);
    if (n > 5 && !strcmp(base + n - 5, ".yaml"))
        n -= 5;
    else if (n > 4 && !strcmp(base + n - 4, ".yml"))
        n -= 4;
    j->name = xstrndup(base, n);
}

static int parse_root(yctx *y, job *j, yaml_node_t *root)
{
    static const char *const keys[] = {"model",    "tokenizer", "inputs", "prompt",
                                       "sampling", "batching",  "output", "runtime", NULL};
    yaml_node_t *v[8];
    if (get_map(y, root, "", keys, v))
        return -1;
    if (need(y, root, v[0], "model"))
        return -1;
    char *model = NULL, *tok = NULL;
    if (get_str(y, v[0], "model", &model))
        return -1;
    j->model_dir = resolve_path(j->dir, model);
    free(model);
    if (get_str(y, v[1], "tokenizer", &tok))
        return -1;
    j->tokenizer_dir = tok ? resolve_path(j->dir, tok) : xstrdup(j->model_dir);
    free(tok);

    yaml_node_t *budget_node = NULL, *max_new_node = NULL, *ctx_node = NULL;
    if (parse_inputs(y, j, root, v[2]) || parse_prompt(y, j, root, v[3], &budget_node) ||
        parse_sampling(y, j, v[4], &max_new_node) || parse_batching(y, j, v[5], &ctx_node) ||
        parse_output(y, j, v[6]) || parse_runtime(y, j, v[7]))
        return -1;

    /* Settings that only make sense together. */
    if (j->thinking_budget && j->thinking_budget >= j->sampling.max_new_tokens)
        return yerr(y, budget_node,
                    "prompt.thinking_budget: %d leaves no room for the answer within "
                    "sampling.max_new_tokens (%d); make it smaller",
                    j->thinking_budget, j->sampling.max_new_tokens);
    if (j->sampling.max_new_tokens >= j->max_context)
        return yerr(y, max_new_node ? max_new_node : ctx_node ? ctx_node : root,
                    "sampling.max_new_tokens (%d) must be less than batching.max_context (%d), "
                    "which also holds the prompt",
                    j->sampling.max_new_tokens, j->max_context);
    if (!strcmp(j->ledger_path, j->jsonl_path))
        return yerr(y, v[6], "output: ledger and jsonl are the same file '%s'", j->ledger_path);
    return 0;
}

int job_load_text(job *j, const char *text, size_t len, const char *path, errbuf *err)
{
    memset(j, 0, sizeof *j);
    set_names(j, path);
    yaml_parser_t parser;
    yaml_document_t doc;
    if (!yaml_parser_initialize(&parser)) {
        job_free(j);
        return errorf(err, "%s: cannot start the YAML parser", path);
    }
    yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
    int rc = -1;
    if (!yaml_parser_load(&parser, &doc)) {
        const yaml_mark_t *m = &parser.problem_mark;
        if (parser.context)
            errorf(err, "%s:%d:%d: YAML syntax error: %s (%s at line %d)", path,
                   (int)m->line + 1, (int)m->column + 1, parser.problem, parser.context,
                   (int)parser.context_mark.line + 1);
        else
            errorf(err, "%s:%d:%d: YAML syntax error: %s", path, (int)m->line + 1,
                   (int)m->column + 1, parser.problem ? parser.problem : "unreadable");
        yaml_parser_delete(&parser);
        job_free(j);
        return -1;
    }
    yctx y = {path, &doc, err};
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
        errorf(err, "%s:1:1: the job file is empty (it needs at least model, inputs and "
                    "prompt)",
               path);
    } else {
        rc = parse_root(&y, j, root);
        if (!rc) {
            /* A second document ("---") would be silently ignored otherwise. */
            yaml_document_t next;
            if (yaml_parser_load(&parser, &next)) {
                yaml_node_t *r2 = yaml_document_get_root_node(&next);
                if (r2)
                    rc = yerr(&y, r2, "the job file holds more than one YAML document");
                yaml_document_delete(&next);
            }
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);
    if (rc)
        job_free(j);
    return rc;
}

int job_load(job *j, const char *path, errbuf *err)
{
    memset(j, 0, sizeof *j);
    strbuf sb = STRBUF_INIT;
    if (sb_read_file(&sb, path)) {
        int e = errno;
        sb_release(&sb);
        return errorf(err, "%s: cannot read the job file: %s", path, strerror(e));
    }
    int rc = job_load_text(j, sb.buf ? sb.buf : "", sb.len, path, err);
    sb_release(&sb);
    return rc;
}

void job_free(job *j)
{
    for (int i = 0; i < j->n_inputs; i++) {
        job_input *in = &j->inputs[i];
        free(in->spec);
        free(in->path);
        free(in->id_field);
        free(in->text_field);
        for (int k = 0; k < in->n_include; k++)
            free(in->include[k]);
        free(in->include);
    }
    free(j->inputs);
    for (int i = 0; i < j->n_tmpl; i++)
        free(j->tmpl[i].name);
    free(j->tmpl);
    free(j->path);
    free(j->dir);
    free(j->name);
    free(j->model_dir);
    free(j->tokenizer_dir);
    free(j->system);
    free(j->user);
    free(j->ledger_path);
    free(j->jsonl_path);
    memset(j, 0, sizeof *j);
}

void job_sample_params(const job_sampling *s, sample_params *sp)
{
    sp->temperature = (float)s->temperature;
    sp->top_k = s->top_k;
    sp->top_p = (float)s->top_p;
    sp->min_p = (float)s->min_p;
    sp->presence_penalty = (float)s->presence_penalty;
    sp->seed = s->seed;
}

/* ---- configuration hash -------------------------------------------------- */

static void add_text(strbuf *out, const char *key, const char *s)
{
    if (s)
        sb_addf(out, "%s=%zu:%s\n", key, strlen(s), s);
    else
        sb_addf(out, "%s=none\n", key);
}

void job_settings_text(const job *j, strbuf *out)
{
    const job_sampling *s = &j->sampling;
    sb_adds(out, "qwen3-batch job settings v1\n");
    add_text(out, "system", j->system);
    add_text(out, "user", j->user);
    sb_addf(out, "mode=%s\nthinking_budget=%d\n", job_mode_name(j->mode), j->thinking_budget);
    sb_addf(out, "temperature=%.17g\ntop_p=%.17g\ntop_k=%d\nmin_p=%.17g\n", s->temperature,
            s->top_p, s->top_k, s->min_p);
    sb_addf(out, "presence_penalty=%.17g\nseed=%llu\nmax_new_tokens=%d\n", s->presence_penalty,
            (unsigned long long)s->seed, s->max_new_tokens);
    sb_addf(out, "max_context=%d\ntoo_long=%s\n", j->max_context, job_too_long_name(j->too_long));
}

/* Hashes a whole small file as "name size\n" + bytes; absent files count as
 * absent. Returns -1 only when the file exists but cannot be read. */
static int hash_whole_file(sha256_ctx *c, const char *dir, const char *name, int required,
                           errbuf *err)
{
    strbuf path = STRBUF_INIT, sb = STRBUF_INIT;
    sb_addf(&path, "%s/%s", dir, name);
    int rc = 0;
    if (sb_read_file(&sb, path.buf)) {
        if (errno != ENOENT || required)
            rc = errorf(err, "%s: cannot read: %s", path.buf, strerror(errno));
    } else {
        char head[300];
        int n = snprintf(head, sizeof head, "%s %zu\n", name, sb.len);
        sha256_update(c, head, (size_t)n);
        sha256_update(c, sb.buf, sb.len);
    }
    sb_release(&path);
    sb_release(&sb);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int hash_weights_sample(sha256_ctx *c, const char *path, const char *name, errbuf *err)
{
    enum { HEAD = 1 << 20, WINDOW = 64 << 10, N_WINDOWS = 16 };
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) {
        int e = errno;
        if (fd >= 0)
            close(fd);
        return errorf(err, "%s: cannot read: %s", path, strerror(e));
    }
    char head[300];
    int n = snprintf(head, sizeof head, "%s %lld\n", name, (long long)st.st_size);
    sha256_update(c, head, (size_t)n);
    char *buf = malloc(HEAD);
    if (!buf)
        abort();
    int rc = 0;
    off_t size = st.st_size;
    off_t offsets[1 + N_WINDOWS];
    size_t lens[1 + N_WINDOWS];
    int n_reads = 0;
    offsets[n_reads] = 0;
    lens[n_reads++] = size < HEAD ? (size_t)size : HEAD;
    if (size > HEAD)
        for (int i = 0; i < N_WINDOWS; i++) {
            offsets[n_reads] = (size - WINDOW) * i / (N_WINDOWS - 1); /* last ends at EOF */
            lens[n_reads++] = WINDOW;
        }
    for (int r = 0; r < n_reads && !rc; r++) {
        size_t done = 0;
        while (done < lens[r]) {
            ssize_t got = pread(fd, buf + done, lens[r] - done, offsets[r] + (off_t)done);
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0) {
                rc = errorf(err, "%s: cannot read: %s", path,
                            got < 0 ? strerror(errno) : "file shrank while reading");
                break;
            }
            done += (size_t)got;
        }
        sha256_update(c, buf, done);
    }
    free(buf);
    close(fd);
    return rc;
}

int job_model_identity(const char *model_dir, const char *tokenizer_dir,
                       char hex[SHA256_HEX_SIZE], errbuf *err)
{
    sha256_ctx c;
    sha256_init(&c);
    sha256_update(&c, "qwen3-batch model identity v1\n", 30);
    if (hash_whole_file(&c, model_dir, "config.json", 1, err) ||
        hash_whole_file(&c, model_dir, "model.safetensors.index.json", 0, err))
        return -1;
    static const char *const tok_files[] = {"tokenizer.json", "tokenizer_config.json",
                                            "vocab.json", "merges.txt"};
    for (size_t i = 0; i < sizeof tok_files / sizeof tok_files[0]; i++)
        if (hash_whole_file(&c, tokenizer_dir, tok_files[i], 0, err))
            return -1;

    DIR *d = opendir(model_dir);
    if (!d)
        return errorf(err, "%s: cannot list the model folder: %s", model_dir, strerror(errno));
    char **names = NULL;
    size_t n_names = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        size_t n = strlen(de->d_name);
        if (n > 12 && !strcmp(de->d_name + n - 12, ".safetensors")) {
            names = realloc(names, (n_names + 1) * sizeof *names);
            if (!names)
                abort();
            names[n_names++] = xstrdup(de->d_name);
        }
    }
    closedir(d);
    qsort(names, n_names, sizeof *names, cmp_str);
    int rc = 0;
    for (size_t i = 0; i < n_names; i++) {
        strbuf path = STRBUF_INIT;
        sb_addf(&path, "%s/%s", model_dir, names[i]);
        if (!rc)
            rc = hash_weights_sample(&c, path.buf, names[i], err);
        sb_release(&path);
        free(names[i]);
    }
    free(names);
    if (rc)
        return -1;
    sha256_final_hex(&c, hex);
    return 0;
}

int job_config_hash(const job *j, char hex[SHA256_HEX_SIZE], errbuf *err)
{
    char model_id[SHA256_HEX_SIZE];
    if (job_model_identity(j->model_dir, j->tokenizer_dir, model_id, err))
        return error_prefix(err, "model");
    strbuf sb = STRBUF_INIT;
    sb_addf(&sb, "model=%s\n", model_id);
    job_settings_text(j, &sb);
    sha256_hex(sb.buf, sb.len, hex);
    sb_release(&sb);
    return 0;
}
