/*
 * mqttsub.c — the tests' MQTT subscriber (mqttsub.h).
 */
#include "tests/support/mqttsub.h"

#include <mosquitto.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MQTTSUB_MAX 10000

struct mqttsub {
    pthread_mutex_t mu;
    struct mosquitto *mosq;
    char *topic;
    json_t *msgs; /* parsed, in order of arrival */
    size_t bad;
    bool subscribed;
};

static int64_t mono_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void on_connect(struct mosquitto *m, void *ctx, int rc)
{
    mqttsub *s = ctx;

    if (rc == 0)
        mosquitto_subscribe(m, NULL, s->topic, 1);
}

static void on_disconnect(struct mosquitto *m, void *ctx, int rc)
{
    mqttsub *s = ctx;

    (void)m;
    (void)rc;
    pthread_mutex_lock(&s->mu);
    s->subscribed = false;
    pthread_mutex_unlock(&s->mu);
}

static void on_subscribe(struct mosquitto *m, void *ctx, int mid, int n,
                         const int *granted)
{
    mqttsub *s = ctx;

    (void)m;
    (void)mid;
    pthread_mutex_lock(&s->mu);
    s->subscribed = n == 1 && granted[0] == 1;
    pthread_mutex_unlock(&s->mu);
}

static void on_message(struct mosquitto *m, void *ctx,
                       const struct mosquitto_message *msg)
{
    mqttsub *s = ctx;
    json_t *j = json_loadb(msg->payload, (size_t)msg->payloadlen, 0, NULL);

    (void)m;
    pthread_mutex_lock(&s->mu);
    if (j == NULL || strcmp(msg->topic, s->topic) != 0 ||
        json_array_size(s->msgs) == MQTTSUB_MAX) {
        s->bad++;
        json_decref(j);
    } else {
        json_array_append_new(s->msgs, j);
    }
    pthread_mutex_unlock(&s->mu);
}

int mqttsub_wait_subscribed(mqttsub *s, int timeout_ms)
{
    int64_t until = mono_ms() + timeout_ms;

    do {
        bool ok;
        pthread_mutex_lock(&s->mu);
        ok = s->subscribed;
        pthread_mutex_unlock(&s->mu);
        if (ok)
            return 0;
        usleep(20 * 1000);
    } while (mono_ms() < until);
    fprintf(stderr, "\nthe test subscriber got no SUBACK in %d ms\n",
            timeout_ms);
    return -1;
}

mqttsub *mqttsub_start(const mqttsub_options *o, int timeout_ms)
{
    mqttsub *s = calloc(1, sizeof(*s));

    if (s == NULL || (s->topic = strdup(o->topic)) == NULL ||
        (s->msgs = json_array()) == NULL) {
        mqttsub_stop(s);
        return NULL;
    }
    pthread_mutex_init(&s->mu, NULL);
    mosquitto_lib_init();
    s->mosq = mosquitto_new(o->client_id, false, s);
    if (s->mosq == NULL) {
        mqttsub_stop(s);
        return NULL;
    }
    mosquitto_connect_callback_set(s->mosq, on_connect);
    mosquitto_disconnect_callback_set(s->mosq, on_disconnect);
    mosquitto_subscribe_callback_set(s->mosq, on_subscribe);
    mosquitto_message_callback_set(s->mosq, on_message);
    mosquitto_reconnect_delay_set(s->mosq, 1, 1, false);
    if ((o->user && mosquitto_username_pw_set(s->mosq, o->user, o->password)) ||
        (o->ca_file &&
         mosquitto_tls_set(s->mosq, o->ca_file, NULL, NULL, NULL, NULL)) ||
        mosquitto_connect_async(s->mosq, "127.0.0.1", o->port, 30) ||
        mosquitto_loop_start(s->mosq) ||
        mqttsub_wait_subscribed(s, timeout_ms) != 0) {
        fprintf(stderr, "\nthe test subscriber cannot subscribe to %s\n",
                o->topic);
        mqttsub_stop(s);
        return NULL;
    }
    return s;
}

json_t *mqttsub_messages(mqttsub *s, size_t *bad)
{
    json_t *copy;

    pthread_mutex_lock(&s->mu);
    copy = json_copy(s->msgs); /* shallow: the messages are never changed */
    if (bad)
        *bad = s->bad;
    pthread_mutex_unlock(&s->mu);
    return copy;
}

void mqttsub_stop(mqttsub *s)
{
    if (s == NULL)
        return;
    if (s->mosq) {
        mosquitto_disconnect(s->mosq);
        mosquitto_loop_stop(s->mosq, false);
        mosquitto_destroy(s->mosq);
    }
    json_decref(s->msgs);
    free(s->topic);
    free(s);
}
