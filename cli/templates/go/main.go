// {{name}}: answers {"message": "<GREETING>, <name>!", "method": ..., "body": ..., "event": ...}.
// `?name=` picks the name, the `greeting` setting in thaw.toml the greeting (a CGI function
// reads its configuration as environment variables: `greeting` is GREETING);
// a body must be JSON (anything else is a 400); `event` is the request's CloudEvents
// attributes when thaw sent it for a schedule, an asynchronous invocation or a queue message
// (null otherwise; thaw.go reads them). A standard net/http handler, served over CGI:
// thaw runs the module once per request (GOOS=wasip1 has no sockets to listen on).
package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/cgi"
	"os"
)

func handle(w http.ResponseWriter, r *http.Request) {
	name := r.URL.Query().Get("name")
	if name == "" {
		name = "world"
	}
	greeting := os.Getenv("GREETING")
	if greeting == "" {
		greeting = "Hello"
	}
	var body any
	data, err := io.ReadAll(r.Body)
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]any{"error": err.Error()})
		return
	}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &body); err != nil {
			writeJSON(w, http.StatusBadRequest, map[string]any{"error": "invalid JSON body: " + err.Error()})
			return
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"message": greeting + ", " + name + "!",
		"method":  r.Method,
		"body":    body,
		"event":   EventFrom(r),
	})
}

func writeJSON(w http.ResponseWriter, status int, value any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(value)
}

func main() {
	if err := cgi.Serve(http.HandlerFunc(handle)); err != nil {
		os.Exit(1)
	}
}
