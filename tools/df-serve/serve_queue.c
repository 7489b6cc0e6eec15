/* serve_queue.c - the job queue. One worker thread runs one generation at a
 * time (it uses every core); up to --queue jobs wait in order behind it,
 * and one more is refused (the caller answers 503 with Retry-After). Jobs
 * are reference counted: the queue, the job table the page polls, and a
 * handler waiting for its answer each hold one. A job is stopped through
 * its stop flag, which the pipeline polls before each step (cancel, A1111's
 * interrupt, a client that closed its connection, shutdown). Finished jobs
 * stay findable for the page until 256 newer ones have finished.
 * Tested by tests/tools/test-df-serve.sh (queue full, cancel, disconnect,
 * SIGTERM). */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "log.h"
#include "serve.h"

#define KEEP_FINISHED 256

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static serve_job *head, *tail;     /* waiting, in order */
static int n_waiting;
static serve_job *running;
static bool closing, worker_done;
static pthread_t worker;
/* Every job the page may ask about: a ring of references. */
static serve_job *table[KEEP_FINISHED + 64];
static const size_t table_cap = sizeof table / sizeof table[0];
static size_t table_next;

void queue_lock(void) { pthread_mutex_lock(&lock); }
void queue_unlock(void) { pthread_mutex_unlock(&lock); }

const char *serve_state_name(job_state s)
{
    static const char *const n[] = {"queued", "running", "done", "failed", "cancelled"};
    return n[s];
}

serve_job *job_new(void)
{
    serve_job *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->refs = 1;
    uint8_t r[16];
    FILE *f = fopen("/dev/urandom", "rb");
    if (!f || fread(r, 1, sizeof r, f) != sizeof r) {
        uint64_t a = (uint64_t)df_now() * 1000003u ^ (uint64_t)(uintptr_t)j;
        memcpy(r, &a, 8);
        memcpy(r + 8, &a, 8);
    }
    if (f)
        fclose(f);
    for (int i = 0; i < 16; i++)
        snprintf(j->id + 2 * i, 3, "%02x", r[i]);
    atomic_init(&j->stop, false);
    j->t_submit = df_now();
    return j;
}

static void job_free(serve_job *j)
{
    serve_params_free(&j->prm);
    for (int i = 0; i < j->n_images; i++) {
        free(j->images[i].png);
        free(j->images[i].infotext);
    }
    free(j->images);
    free(j->error);
    free(j);
}

void job_release(serve_job *j)
{
    if (!j)
        return;
    pthread_mutex_lock(&lock);
    int left = --j->refs;
    pthread_mutex_unlock(&lock);
    if (left == 0)
        job_free(j);
}

/* Under the lock. The slot's old job loses the table's reference. */
static void table_add(serve_job *j)
{
    serve_job *old = table[table_next];
    j->refs++;
    table[table_next] = j;
    table_next = (table_next + 1) % table_cap;
    if (old && --old->refs == 0)
        job_free(old);
}

int queue_submit(serve_job *j, int *pos)
{
    pthread_mutex_lock(&lock);
    int rc = 0;
    if (closing) {
        rc = -2;
    } else if (n_waiting >= g_cfg.queue_max) {
        rc = -1;
    } else {
        j->refs++;                 /* the queue's */
        j->state = JOB_QUEUED;
        j->next = NULL;
        if (tail)
            tail->next = j;
        else
            head = j;
        tail = j;
        *pos = n_waiting++;
        table_add(j);
        pthread_cond_broadcast(&changed);
    }
    pthread_mutex_unlock(&lock);
    return rc;
}

void job_drop_payload(serve_job *j)
{
    pthread_mutex_lock(&lock);
    for (int i = 0; i < j->n_images; i++) {
        free(j->images[i].png);
        j->images[i].png = NULL;
        j->images[i].png_len = 0;
    }
    free(j->prm.init_rgb);
    free(j->prm.mask);
    j->prm.init_rgb = j->prm.mask = NULL;
    pthread_mutex_unlock(&lock);
}

serve_job *queue_find(const char *id)
{
    serve_job *found = NULL;
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < table_cap && !found; i++)
        if (table[i] && !strcmp(table[i]->id, id))
            found = table[i];
    if (found)
        found->refs++;
    pthread_mutex_unlock(&lock);
    return found;
}

/* Under the lock: take j out of the waiting list; true if it was there. */
static bool unlink_waiting(serve_job *j)
{
    serve_job **pp = &head, *prev = NULL;
    for (; *pp; prev = *pp, pp = &(*pp)->next)
        if (*pp == j) {
            *pp = j->next;
            if (tail == j)
                tail = prev;
            j->next = NULL;
            n_waiting--;
            return true;
        }
    return false;
}

void queue_cancel(serve_job *j)
{
    pthread_mutex_lock(&lock);
    atomic_store(&j->stop, true);
    if (j->state == JOB_QUEUED && unlink_waiting(j)) {
        j->state = JOB_CANCELLED;
        j->t_end = df_now();
        j->refs--;                 /* the queue's; the caller holds one */
        pthread_cond_broadcast(&changed);
    }
    pthread_mutex_unlock(&lock);
}

bool queue_interrupt_running(void)
{
    pthread_mutex_lock(&lock);
    bool any = running != NULL;
    if (running)
        atomic_store(&running->stop, true);
    pthread_mutex_unlock(&lock);
    return any;
}

static bool final_state(job_state s) { return s != JOB_QUEUED && s != JOB_RUNNING; }

/* The client closed its end (a read of 0 bytes, or an error); data sent
 * ahead (a pipelined request) is left alone. */
static bool peer_gone(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLRDHUP};
    if (poll(&p, 1, 0) <= 0)
        return false;
    if (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL))
        return true;
    char c;
    ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

void queue_wait(serve_job *j, int conn_fd)
{
    pthread_mutex_lock(&lock);
    while (!final_state(j->state)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&changed, &lock, &ts);
        if (conn_fd >= 0 && !final_state(j->state) && peer_gone(conn_fd)) {
            pthread_mutex_unlock(&lock);
            queue_cancel(j);
            pthread_mutex_lock(&lock);
            conn_fd = -1;
        }
    }
    pthread_mutex_unlock(&lock);
}

static int position_of(const serve_job *j)
{
    int k = 0;
    for (const serve_job *q = head; q; q = q->next, k++)
        if (q == j)
            return k;
    return -1;
}

void queue_view(serve_job *j, job_view *v)
{
    pthread_mutex_lock(&lock);
    *v = (job_view){.state = j->state, .position = j->state == JOB_QUEUED ? position_of(j) : 0,
                    .step = j->step, .steps = j->steps, .run = j->run, .runs = j->prm.runs,
                    .n_images = j->n_images, .stage = j->stage, .t_start = j->t_start};
    pthread_mutex_unlock(&lock);
}

bool queue_running_view(job_view *v, int *queued)
{
    pthread_mutex_lock(&lock);
    bool any = running != NULL;
    *queued = n_waiting;
    if (any) {
        serve_job *j = running;
        *v = (job_view){.state = j->state, .step = j->step, .steps = j->steps, .run = j->run,
                        .runs = j->prm.runs, .n_images = j->n_images, .stage = j->stage,
                        .t_start = j->t_start};
    }
    pthread_mutex_unlock(&lock);
    return any;
}

static void *worker_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&lock);
    for (;;) {
        while (!head && !closing)
            pthread_cond_wait(&changed, &lock);
        if (!head)
            break;
        serve_job *j = head;
        unlink_waiting(j);
        running = j;
        j->state = JOB_RUNNING;
        j->t_start = df_now();
        pthread_mutex_unlock(&lock);
        run_job(j);                /* sets the final state under the lock */
        pthread_mutex_lock(&lock);
        running = NULL;
        pthread_cond_broadcast(&changed);
        if (--j->refs == 0)
            job_free(j);
    }
    worker_done = true;
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
    return NULL;
}

void queue_start(void)
{
    if (pthread_create(&worker, NULL, worker_main, NULL) != 0) {
        df_error("cannot start the worker thread");
        exit(1);
    }
}

void queue_shutdown(double grace)
{
    pthread_mutex_lock(&lock);
    closing = true;
    while (head) {
        serve_job *j = head;
        unlink_waiting(j);
        atomic_store(&j->stop, true);
        j->state = JOB_CANCELLED;
        j->t_end = df_now();
        free(j->error);
        j->error = strdup("the server is shutting down");
        if (--j->refs == 0)
            job_free(j);
    }
    pthread_cond_broadcast(&changed);
    double end = df_now() + grace;
    while (!worker_done) {
        if (df_now() >= end && running)
            atomic_store(&running->stop, true);   /* past the grace: cancel it */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&changed, &lock, &ts);
    }
    pthread_mutex_unlock(&lock);
    pthread_join(worker, NULL);
    pthread_mutex_lock(&lock);
    for (size_t i = 0; i < table_cap; i++)
        if (table[i] && --table[i]->refs == 0)
            job_free(table[i]);
    memset(table, 0, sizeof table);
    pthread_mutex_unlock(&lock);
}
