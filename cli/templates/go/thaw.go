package main

import (
	"net/http"
	"strconv"
)

// The ce-type of each kind of event thaw sends.
const (
	ScheduleTick    = "dev.thaw.schedule.tick"
	AsyncInvocation = "dev.thaw.invocation"
	NatsMessage     = "dev.thaw.nats.message"
	RedisMessage    = "dev.thaw.redis.message"
)

// Event is a request's CloudEvents attributes: thaw sends every schedule tick, asynchronous
// invocation and queue message as an HTTP request with CloudEvents 1.0 binary-mode headers
// (ce-id, ce-source, ce-type, ce-time, ce-subject; the body is the event's data).
//
// Delivery is at least once: a retry or a restart can deliver one event again with the same
// ID; a handler whose effect must not repeat keys it by ID.
type Event struct {
	ID      string  `json:"id"`      // unique within its source; the same on every retry
	Source  string  `json:"source"`  // /thaw/schedules/<function>, /thaw/functions/<function>, ...
	Type    string  `json:"type"`    // one of the constants above, or a client's own type
	Time    *string `json:"time"`    // RFC 3339, or nil
	Subject *string `json:"subject"` // a cron expression, a path, a subject; or nil
	Attempt int     `json:"attempt"` // which delivery attempt this is, from 1
}

// EventFrom returns the event r carries, or nil for a plain request (no ce-id, ce-source or
// ce-type).
func EventFrom(r *http.Request) *Event {
	h := r.Header
	e := &Event{
		ID:      h.Get("ce-id"),
		Source:  h.Get("ce-source"),
		Type:    h.Get("ce-type"),
		Time:    optional(h, "ce-time"),
		Subject: optional(h, "ce-subject"),
		Attempt: 1,
	}
	if e.ID == "" || e.Source == "" || e.Type == "" {
		return nil
	}
	if n, err := strconv.Atoi(h.Get("ce-thawattempt")); err == nil {
		e.Attempt = n
	}
	return e
}

func optional(h http.Header, name string) *string {
	if values := h.Values(name); len(values) > 0 {
		return &values[0]
	}
	return nil
}

// IsScheduleTick says whether a schedule sent it (false for nil: a plain request).
func (e *Event) IsScheduleTick() bool { return e != nil && e.Type == ScheduleTick }

// IsAsyncInvocation says whether it is an asynchronous invocation.
func (e *Event) IsAsyncInvocation() bool { return e != nil && e.Type == AsyncInvocation }

// IsQueueMessage says whether a queue trigger (NATS or Redis) sent it.
func (e *Event) IsQueueMessage() bool {
	return e != nil && (e.Type == NatsMessage || e.Type == RedisMessage)
}
