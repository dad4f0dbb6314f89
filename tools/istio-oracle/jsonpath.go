package main

import (
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// Generic JSON helpers: both renderings are read as plain JSON, so one
// extractor serves istiod's protojson and the mesh's output alike.

type obj = map[string]any

// get walks a dotted path of object keys ("a.b.c"); numeric segments index
// arrays. Missing anything: nil.
func get(v any, path string) any {
	if path == "" {
		return v
	}
	for _, seg := range strings.Split(path, ".") {
		switch t := v.(type) {
		case obj:
			v = t[seg]
		case []any:
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(t) {
				return nil
			}
			v = t[i]
		default:
			return nil
		}
	}
	return v
}

func getObj(v any, path string) obj {
	o, _ := get(v, path).(obj)
	return o
}

func getList(v any, path string) []any {
	l, _ := get(v, path).([]any)
	return l
}

func getStr(v any, path string) string {
	s, _ := get(v, path).(string)
	return s
}

var (
	protoDuration = regexp.MustCompile(`^-?[0-9]+(\.[0-9]+)?s$`)
	digits        = regexp.MustCompile(`^-?[0-9]+$`)
)

// normalize makes equal values print equally: protojson durations
// ("3600s", "0.001s") become Go durations ("1h0m0s", "1ms"), 64-bit integers
// written as strings become numbers, objects print with sorted keys.
func normalize(v any) any {
	switch t := v.(type) {
	case string:
		if protoDuration.MatchString(t) {
			if f, err := strconv.ParseFloat(strings.TrimSuffix(t, "s"), 64); err == nil {
				return time.Duration(f * float64(time.Second)).String()
			}
		}
		if digits.MatchString(t) {
			if n, err := strconv.ParseInt(t, 10, 64); err == nil {
				return float64(n)
			}
		}
		return t
	case obj:
		out := obj{}
		for k, x := range t {
			out[k] = normalize(x)
		}
		return out
	case []any:
		out := make([]any, len(t))
		for i, x := range t {
			out[i] = normalize(x)
		}
		return out
	default:
		return v
	}
}

// show prints a normalized value: "unset" for nil, strings bare, numbers
// without exponent, the rest as compact JSON with sorted keys.
func show(v any) string {
	v = normalize(v)
	switch t := v.(type) {
	case nil:
		return "unset"
	case string:
		return t
	case float64:
		return strconv.FormatFloat(t, 'f', -1, 64)
	default:
		js, _ := json.Marshal(t)
		return string(js)
	}
}
