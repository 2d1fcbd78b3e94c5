/*
 * ids.c - the rules of a drive id, the tables of the fields, and the
 * exported copies of the counter hot path.
 */
#include "internal.h"

#include <string.h>

#define STRINGIFY_(x) #x
#define STRINGIFY(x) STRINGIFY_(x)

#define FIELD_NAME_(name, doc) #name,
#define FIELD_DOC_(name, doc) doc,
static const char *const field_name[NFIELDS] = {PMEM_METRICS_FIELDS(FIELD_NAME_)};
static const char *const field_doc[NFIELDS] = {PMEM_METRICS_FIELDS(FIELD_DOC_)};

/* The external definitions of the header's inline hot path (C11 6.7.4). */
extern inline void pmem_metrics_add(struct pmem_metrics_counter *c, uint64_t n);
extern inline void pmem_metrics_inc(struct pmem_metrics_counter *c);
extern inline uint64_t pmem_metrics_count(const struct pmem_metrics_counter *c);
extern inline uint64_t pmem_metrics_fetch_diff(const struct pmem_metrics_counter *c);

enum pmem_metrics_id_error pmem_metrics_id_check(const char *drive_id, size_t len)
{
	const unsigned char *p = (const unsigned char *)drive_id;
	size_t chars = 0;

	if (!p)
		return PMEM_METRICS_ID_NULL;
	if (len == 0)
		return PMEM_METRICS_ID_EMPTY;
	for (size_t i = 0; i < len; chars++) {
		unsigned char b = p[i];
		uint32_t cp;
		size_t k;

		if (b < 0x80) {
			if (b < 0x20 || b == 0x7f)
				return PMEM_METRICS_ID_CONTROL;
			i++;
			continue;
		}
		if (b >= 0xc2 && b <= 0xdf) {
			k = 1;
			cp = b & 0x1f;
		} else if (b >= 0xe0 && b <= 0xef) {
			k = 2;
			cp = b & 0x0f;
		} else if (b >= 0xf0 && b <= 0xf4) {
			k = 3;
			cp = b & 0x07;
		} else {
			return PMEM_METRICS_ID_UTF8;
		}
		if (len - i <= k)
			return PMEM_METRICS_ID_UTF8;
		for (size_t j = 1; j <= k; j++) {
			if ((p[i + j] & 0xc0) != 0x80)
				return PMEM_METRICS_ID_UTF8;
			cp = cp << 6 | (p[i + j] & 0x3f);
		}
		/* Overlong forms, UTF-16 surrogates, beyond U+10FFFF. */
		if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) ||
		    (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
			return PMEM_METRICS_ID_UTF8;
		if (cp <= 0x9f) /* C1 controls, U+0080..U+009F */
			return PMEM_METRICS_ID_CONTROL;
		i += k + 1;
	}
	return chars > PMEM_METRICS_ID_MAX_CHARS ? PMEM_METRICS_ID_TOO_LONG : PMEM_METRICS_ID_OK;
}

const char *pmem_metrics_id_strerror(int error)
{
	switch (error) {
	case PMEM_METRICS_ID_OK:
		return "valid";
	case PMEM_METRICS_ID_NULL:
		return "must not be NULL";
	case PMEM_METRICS_ID_EMPTY:
		return "must not be empty";
	case PMEM_METRICS_ID_TOO_LONG:
		return "must be at most " STRINGIFY(PMEM_METRICS_ID_MAX_CHARS) " characters long";
	case PMEM_METRICS_ID_CONTROL:
		return "must not contain NUL or other control characters";
	case PMEM_METRICS_ID_UTF8:
		return "must be valid UTF-8";
	default:
		return "unknown error";
	}
}

int pmi_id_cmp(const char *a, size_t a_len, const char *b, size_t b_len)
{
	int r = memcmp(a, b, a_len < b_len ? a_len : b_len);

	if (r)
		return r;
	return (a_len > b_len) - (a_len < b_len);
}

size_t pmi_fields_encode(char *out)
{
	size_t n = 0;

	for (size_t f = 0; f < NFIELDS; f++) {
		const char *part[2] = {field_name[f], field_doc[f]};

		for (int k = 0; k < 2; k++) {
			size_t len = strlen(part[k]) + 1;

			if (out)
				memcpy(out + n, part[k], len);
			n += len;
		}
	}
	return n;
}

#define FIELD_SIZE_(name, doc) +sizeof(#name) + sizeof(doc)
enum { FIELDS_TEXT_SIZE = 0 PMEM_METRICS_FIELDS(FIELD_SIZE_) };
_Static_assert((long)FIELDS_TEXT_SIZE <= (long)SEG_MAX_FIELDS_SIZE, "the field list fits a segment's");

static pthread_once_t fields_once = PTHREAD_ONCE_INIT;
static char fields_text[FIELDS_TEXT_SIZE];
static size_t fields_len;

static void encode_fields(void)
{
	fields_len = pmi_fields_encode(fields_text);
}

const char *pmi_fields(size_t *len)
{
	pthread_once(&fields_once, encode_fields);
	*len = fields_len;
	return fields_text;
}

struct pmem_metrics_counter *pmem_metrics_field(struct pmem_metrics *m, size_t i)
{
	return m && i < NFIELDS ? pmi_counter(m, i) : NULL;
}

const char *pmem_metrics_field_name(size_t i)
{
	return i < NFIELDS ? field_name[i] : NULL;
}

const char *pmem_metrics_field_doc(size_t i)
{
	return i < NFIELDS ? field_doc[i] : NULL;
}
