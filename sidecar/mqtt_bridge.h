/*
 * mqtt_bridge.h — forwards the governed view of event ports to MQTT
 * brokers with libmosquitto: for every DataProduct of the snapshot in force
 * whose event port has an `mqtt` setting (broker, topic, audience, qos),
 * one bridge reads the port's log, masks and filters each event as the
 * audience principal's decision says, and publishes it to the topic;
 * it reconnects with backoff and resends what the broker did not
 * acknowledge.  docs/internals/mqtt_bridge.md.
 */
#ifndef POLIS_SC_MQTT_BRIDGE_H
#define POLIS_SC_MQTT_BRIDGE_H

#include "common/error.h"
#include "sidecar/event_port.h"
#include "sidecar/ports.h"
#include "sidecar/snapshot.h"

typedef struct sc_bridges sc_bridges;

typedef struct sc_bridges_options {
    const char *domain;     /* the sidecar's domain */
    const char *id;         /* the sidecar's id: MQTT client ids derive
                               from it */
    const char *state_dir;  /* acknowledged offsets are kept under
                               <state_dir>/bridges/ */
    sc_snapshot_slot *slot; /* the snapshot in force */
    sc_ports *ports;        /* the product catalogue */
    sc_events *events;      /* the event ports' logs */
    int reconnect_max_ms;   /* backoff cap; 0: 10000 */
} sc_bridges_options;

/*
 * Start the bridge set: it follows the snapshot in force, starting,
 * restarting (changed settings) and stopping one bridge per bridged event
 * port.  Everything in `o` is borrowed and must outlive the set.  Caller
 * stops and frees with sc_bridges_free.
 */
int sc_bridges_start(const sc_bridges_options *o, sc_bridges **out,
                     polis_error *err);

/* Stop every bridge (a last flush of what is in flight, bounded), free.
 * NULL is a no-op. */
void sc_bridges_free(sc_bridges *b);

#endif
