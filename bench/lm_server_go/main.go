// Command lmserver is the benchmark LM instrument in Go: an OpenAI-compatible
// chat-completions endpoint that answers every request after a latency drawn
// from a configured distribution. It is bench/lm_server.py's fast twin, for
// benchmarks whose contenders would otherwise outrun a Python server (see
// bench/lm_client_scaling.py): Go's standard library serves thousands of
// requests per second per core.
//
//	go build -o lmserver . && ./lmserver --port 0 --latency fixed:0.1
//
// The first line printed is the port. GET /stats reports requests served.
// SIGTERM or SIGINT stops it.
//
// With --load URL it is instead a load generator for measuring an instrument's
// ceiling: --concurrency keep-alive connections post chat completions to URL
// as fast as they are answered, --requests in all, then it prints one JSON line
// {"requests": N, "seconds": S, "errors": E} and exits. A Python client would
// be the wall before the server is.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
)

// Usage reported per answer, as bench/scripted_lm.py's default reply does.
const (
	promptTokens     = 11
	completionTokens = 7
)

type latency func() time.Duration

// parseLatency reads fixed:S, uniform:LO:HI or lognormal:MEDIAN:SIGMA (seconds).
func parseLatency(spec string) (latency, error) {
	parts := strings.Split(spec, ":")
	nums := make([]float64, 0, 2)
	for _, p := range parts[1:] {
		v, err := strconv.ParseFloat(p, 64)
		if err != nil || v < 0 {
			return nil, fmt.Errorf("latency %q: %q is not a non-negative number", spec, p)
		}
		nums = append(nums, v)
	}
	seconds := func(s float64) time.Duration { return time.Duration(s * float64(time.Second)) }
	switch {
	case parts[0] == "fixed" && len(nums) == 1:
		d := seconds(nums[0])
		return func() time.Duration { return d }, nil
	case parts[0] == "uniform" && len(nums) == 2 && nums[0] <= nums[1]:
		lo, hi := nums[0], nums[1]
		return func() time.Duration { return seconds(lo + rand.Float64()*(hi-lo)) }, nil
	case parts[0] == "lognormal" && len(nums) == 2:
		median, sigma := nums[0], nums[1]
		return func() time.Duration {
			return seconds(median * math.Exp(sigma*rand.NormFloat64()))
		}, nil
	}
	return nil, fmt.Errorf("latency %q: expected fixed:S, uniform:LO:HI or lognormal:MEDIAN:SIGMA", spec)
}

// chatRequest is what the server checks of a request: a model and at least
// one message. Messages stay raw: unescaping every prompt would be most of the
// server's CPU per request, and nothing here reads them.
type chatRequest struct {
	Model    string            `json:"model"`
	Messages []json.RawMessage `json:"messages"`
}

// load posts requests to url from concurrency goroutines and prints what it took.
func load(url string, concurrency, requests int) {
	client := &http.Client{Transport: &http.Transport{
		MaxIdleConnsPerHost: concurrency,
		MaxConnsPerHost:     concurrency,
		DisableCompression:  true,
	}}
	body := []byte(`{"model": "bench", "messages": [{"role": "user", "content": "question"}]}`)
	var next, failed atomic.Int64
	done := make(chan struct{})
	started := time.Now()
	for range concurrency {
		go func() {
			defer func() { done <- struct{}{} }()
			for next.Add(1) <= int64(requests) {
				response, err := client.Post(url, "application/json", bytes.NewReader(body))
				if err != nil {
					failed.Add(1)
					continue
				}
				io.Copy(io.Discard, response.Body)
				response.Body.Close()
				if response.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}
		}()
	}
	for range concurrency {
		<-done
	}
	fmt.Printf(`{"requests": %d, "seconds": %.6f, "errors": %d}`+"\n",
		requests, time.Since(started).Seconds(), failed.Load())
}

func main() {
	port := flag.Int("port", 0, "port to listen on (loopback); 0 picks a free one")
	latencySpec := flag.String("latency", "fixed:0.1", "fixed:S | uniform:LO:HI | lognormal:MEDIAN:SIGMA")
	text := flag.String("text", "Hello from the scripted LM.", "the completion text")
	loadURL := flag.String("load", "", "be a load generator posting to this URL instead of a server")
	concurrency := flag.Int("concurrency", 256, "with --load: requests in flight")
	requests := flag.Int("requests", 100000, "with --load: requests in all")
	flag.Parse()
	if *loadURL != "" {
		load(*loadURL, *concurrency, *requests)
		return
	}
	wait, err := parseLatency(*latencySpec)
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(2)
	}
	content, _ := json.Marshal(*text)
	var served atomic.Int64

	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/chat/completions", func(w http.ResponseWriter, r *http.Request) {
		var request chatRequest
		if err := json.NewDecoder(r.Body).Decode(&request); err != nil || len(request.Messages) == 0 {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			fmt.Fprint(w, `{"error": {"message": "not a chat completion request", "type": "invalid_request_error"}}`)
			return
		}
		time.Sleep(wait())
		n := served.Add(1)
		model, _ := json.Marshal(request.Model)
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w,
			`{"id": "cmpl-%d", "object": "chat.completion", "model": %s, `+
				`"choices": [{"index": 0, "message": {"role": "assistant", "content": %s}, "finish_reason": "stop"}], `+
				`"usage": {"prompt_tokens": %d, "completion_tokens": %d, "total_tokens": %d}}`,
			n, model, content, promptTokens, completionTokens, promptTokens+completionTokens)
	})
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		fmt.Fprintf(w, `{"served": %d}`, served.Load())
	})

	listener, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(*port)))
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	server := &http.Server{Handler: mux, IdleTimeout: 120 * time.Second}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		server.Shutdown(ctx)
	}()
	fmt.Println(listener.Addr().(*net.TCPAddr).Port)
	if err := server.Serve(listener); err != nil && err != http.ErrServerClosed {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
