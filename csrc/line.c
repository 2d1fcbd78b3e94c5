/*
 * line.c - writing metrics lines: whole lines, fragments cut back or closed off.
 *
 * Overview
 * ========
 * pmem_metrics_line_write() puts (part of) one line out and records what got
 * out in the caller's memory before it returns; pmem_metrics_line_cut()
 * takes a line that did not go out whole back out of a regular file, when
 * that cannot remove anything else.  Several writers, in any processes, may
 * share one file or pipe.
 *
 * Guarantees
 * ----------
 * - A regular file: each call holds an exclusive flock(2) on the file's open
 *   file description (taken without waiting: EAGAIN if another writer holds
 *   it) while it checks how the file ends and appends, and the cut holds it
 *   while it checks the size and truncates.  So among writers that use this
 *   library no append lands between another writer's check and its append
 *   or truncation: a cut never removes another writer's line, and a line
 *   never starts on another's fragment without PMEM_METRICS_LINE_CUT first.
 * - A killed writer's lock goes with it (when the last descriptor of its
 *   open file description closes).
 * - A pipe, a socket: a reader that left gives EPIPE, never a SIGPIPE death,
 *   and no SIGPIPE is left pending.
 *
 * Limitations
 * ===========
 * - Writers that do not take the lock (a shell's `>>`) can still append
 *   between a check and the append or truncation that follows it.
 * - Processes sharing one open file description (a forked child's inherited
 *   descriptor) share its lock: they do not exclude each other.
 * - A descriptor opened for writing only cannot be read to see how the file
 *   ends; it is reopened for reading through /proc/self/fd.  Where that fails
 *   too (no /proc, no read permission), the file is taken to end with a
 *   newline.
 */
#define _GNU_SOURCE /* pthread_sigmask, sigtimedwait, flock with -std=c11 */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "pmem_metrics.h"

static const char CUT[] = PMEM_METRICS_LINE_CUT;
#define CUT_LEN (sizeof(CUT) - 1)

/* The byte at `at` of the file open at `fd`: 0 and *c, or -1 (unreadable). */
static int read_byte(int fd, off_t at, char *c)
{
	char path[32];
	ssize_t n;
	int rfd;

	n = pread(fd, c, 1, at);
	if (n == 1)
		return 0;
	if (n < 0 && errno == EBADF) { /* opened for writing only: read it anew */
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		rfd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
		if (rfd >= 0) {
			n = pread(rfd, c, 1, at);
			close(rfd);
			if (n == 1)
				return 0;
		}
	}
	return -1;
}

/*
 * Append buf to the regular file `fd`, whole if it can, holding the lock:
 * see pmem_metrics_line_write().  The line goes where the file ends (or at
 * the position of a descriptor without O_APPEND): `at`.
 */
static long write_regular(int fd, const char *buf, size_t len, size_t *sent, int64_t *start)
{
	struct iovec iov[2];
	struct stat st;
	size_t cut = 0, total = 0;
	off_t at;
	ssize_t n;
	char last;
	int flags, err = 0;

	if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
		if (errno == EWOULDBLOCK || errno == EINTR) {
			errno = EAGAIN;
			return -1;
		}
		/* flock not supported here (ENOLCK, EINVAL): write unlocked. */
	}
	flags = fcntl(fd, F_GETFL);
	if (fstat(fd, &st) != 0) {
		err = errno;
		goto out;
	}
	at = (flags >= 0 && (flags & O_APPEND)) ? st.st_size : lseek(fd, 0, SEEK_CUR);
	if (*sent > 0) {
		/* The rest of a line: only right after its first part. */
		if (*start < 0 || at != (off_t)(*start + (int64_t)*sent)) {
			err = EIO;
			goto out;
		}
	} else if (at > 0 && !(len >= CUT_LEN && memcmp(buf, CUT, CUT_LEN) == 0) &&
		   read_byte(fd, at - 1, &last) == 0 && last != '\n') {
		cut = CUT_LEN; /* another writer's fragment ends the file: close it off */
	}
	while (total < len) {
		int k = 0;

		if (cut > 0) { /* the marker (what is left of it) goes out first, in the same write */
			iov[k].iov_base = (void *)&CUT[CUT_LEN - cut];
			iov[k++].iov_len = cut;
		}
		iov[k].iov_base = (void *)(buf + total);
		iov[k++].iov_len = len - total;
		n = writev(fd, iov, k);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = errno;
			break;
		}
		if ((size_t)n <= cut) {
			cut -= (size_t)n;
			if (n == 0) {
				err = EIO; /* a write of nothing: give up, as on an error */
				break;
			}
			continue;
		}
		n -= (ssize_t)cut;
		cut = 0;
		if (*start < 0) {
			off_t end = lseek(fd, 0, SEEK_CUR); /* just after what went out */

			if (end >= n)
				*start = (int64_t)(end - n);
		}
		total += (size_t)n;
		*sent += (size_t)n;
	}
out:
	flock(fd, LOCK_UN);
	if (err) {
		errno = err;
		return -1;
	}
	return (long)total;
}

long pmem_metrics_line_write(int fd, const char *buf, size_t len, size_t *sent, int64_t *start)
{
	struct stat st;
	sigset_t pipe, old;
	ssize_t n;
	int err;

	if (!buf || !sent || !start) {
		errno = EINVAL;
		return -1;
	}
	if (fstat(fd, &st) != 0)
		return -1;
	if (S_ISREG(st.st_mode))
		return write_regular(fd, buf, len, sent, start);
	if (S_ISSOCK(st.st_mode)) {
		n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
		err = errno;
	} else {
		sigemptyset(&pipe);
		sigaddset(&pipe, SIGPIPE);
		pthread_sigmask(SIG_BLOCK, &pipe, &old);
		n = write(fd, buf, len);
		err = errno;
		if (n < 0 && err == EPIPE && !sigismember(&old, SIGPIPE)) {
			struct timespec none = {0, 0};

			sigtimedwait(&pipe, NULL, &none); /* take back the one this write raised */
		}
		pthread_sigmask(SIG_SETMASK, &old, NULL);
	}
	if (n > 0)
		*sent += (size_t)n;
	errno = err;
	return (long)n;
}

int pmem_metrics_line_cut(int fd, int64_t start, size_t *sent)
{
	struct stat st;
	int flags, cut = 0, err = 0;

	if (!sent) {
		errno = EINVAL;
		return -1;
	}
	if (start < 0 || *sent == 0)
		return 0; /* nothing of the line is in the file */
	if (flock(fd, LOCK_EX | LOCK_NB) != 0 && (errno == EWOULDBLOCK || errno == EINTR))
		return 0; /* another writer is appending: leave the fragment, closed off later */
	if (fstat(fd, &st) != 0) {
		err = errno;
	} else if (st.st_size == (off_t)(start + (int64_t)*sent)) {
		/* The file still ends where the fragment does: nothing after it. */
		if (ftruncate(fd, (off_t)start) != 0) {
			err = errno;
		} else {
			*sent = 0; /* recorded before returning: none of the line stays */
			cut = 1;
			flags = fcntl(fd, F_GETFL);
			if (flags >= 0 && !(flags & O_APPEND) && lseek(fd, (off_t)start, SEEK_SET) < 0)
				err = errno;
		}
	}
	flock(fd, LOCK_UN);
	if (err) {
		errno = err;
		return -1;
	}
	return cut;
}
