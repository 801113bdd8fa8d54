package config

import (
	"fmt"
	"os"
	"reflect"
	"sort"
	"strings"
	"time"

	"github.com/go-viper/mapstructure/v2"
	"github.com/knadh/koanf/parsers/yaml"
	"github.com/knadh/koanf/providers/env/v2"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/providers/posflag"
	"github.com/knadh/koanf/v2"
	"github.com/spf13/pflag"
)

// EnvPrefix starts every environment variable that sets a config key;
// "__" separates nesting levels (MAILCAPTURE_LEGACY__IMAP__ADDRESS).
const EnvPrefix = "MAILCAPTURE_"

// Sources names where configuration comes from, weakest first.
type Sources struct {
	// File is the YAML file; empty means none.
	File string
	// Environ lists "KEY=value" pairs (usually os.Environ()).
	Environ []string
	// Flags holds flags registered by RegisterFlags; only flags the user
	// set override the other sources. Nil means none.
	Flags *pflag.FlagSet
}

// Error lists every problem found in a configuration, one per key.
type Error struct {
	Problems []Problem
}

// Problem is one bad key.
type Problem struct {
	Key     string
	Message string
}

func (e *Error) Error() string {
	lines := make([]string, 0, len(e.Problems))
	for _, p := range e.Problems {
		lines = append(lines, p.Key+": "+p.Message)
	}
	return "invalid configuration:\n  " + strings.Join(lines, "\n  ")
}

// Load reads the sources, applies defaults, checks for unknown keys and
// validates every value. The error, if any, is an *Error naming the keys.
func Load(src Sources) (Config, error) {
	k := koanf.New(".")
	var problems []Problem
	if src.File != "" {
		if err := k.Load(file.Provider(src.File), yaml.Parser()); err != nil {
			return Config{}, fmt.Errorf("config file %s: %w", src.File, err)
		}
		problems = append(problems, unknownKeys(k.Keys(), "")...)
	}
	envK := koanf.New(".")
	if err := envK.Load(env.Provider(".", env.Opt{
		Prefix:        EnvPrefix,
		EnvironFunc:   func() []string { return src.Environ },
		TransformFunc: envTransform,
	}), nil); err != nil {
		return Config{}, fmt.Errorf("environment: %w", err)
	}
	problems = append(problems, unknownKeys(envK.Keys(), "environment variable for ")...)
	if err := k.Merge(envK); err != nil {
		return Config{}, fmt.Errorf("environment: %w", err)
	}
	if src.Flags != nil {
		if err := k.Load(posflag.ProviderWithFlag(src.Flags, ".", nil, flagValue), nil); err != nil {
			return Config{}, fmt.Errorf("flags: %w", err)
		}
	}
	if len(problems) > 0 {
		return Config{}, &Error{Problems: problems}
	}

	cfg := Default()
	if err := decode(k, &cfg); err != nil {
		return Config{}, err
	}
	if err := cfg.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// decode unmarshals k onto cfg, reporting type errors by key.
func decode(k *koanf.Koanf, cfg *Config) error {
	var problems []Problem
	for _, key := range k.Keys() {
		// Decode key by key so that a type error names its key.
		leaf, ok := leafKinds[key]
		if !ok {
			continue
		}
		dec, err := mapstructure.NewDecoder(decoderConfig(reflect.New(leaf.Type).Interface()))
		if err != nil {
			return fmt.Errorf("config: %w", err)
		}
		value := k.Get(key)
		if err := dec.Decode(value); err != nil {
			problems = append(problems, Problem{Key: key, Message: fmt.Sprintf("%v is not a valid %s", describe(value), typeName(leaf.Type))})
		}
	}
	if len(problems) > 0 {
		return &Error{Problems: problems}
	}
	conf := decoderConfig(cfg)
	conf.TagName = "koanf"
	if err := k.UnmarshalWithConf("", cfg, koanf.UnmarshalConf{Tag: "koanf", DecoderConfig: conf}); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	return nil
}

func decoderConfig(result any) *mapstructure.DecoderConfig {
	return &mapstructure.DecoderConfig{
		WeaklyTypedInput: true,
		DecodeHook: mapstructure.ComposeDecodeHookFunc(
			mapstructure.StringToTimeDurationHookFunc(),
			mapstructure.StringToSliceHookFunc(",")),
		Result: result,
	}
}

func describe(v any) string {
	if s, ok := v.(string); ok {
		return fmt.Sprintf("%q", s)
	}
	return fmt.Sprintf("%v", v)
}

func typeName(t reflect.Type) string {
	switch {
	case t == reflect.TypeOf(time.Duration(0)):
		return "duration (e.g. 30s, 5m)"
	case t.Kind() == reflect.Bool:
		return "boolean (true or false)"
	case t.Kind() == reflect.Slice:
		return "list of strings"
	case t.Kind() >= reflect.Uint && t.Kind() <= reflect.Uint64:
		return "non-negative whole number"
	case t.Kind() >= reflect.Int && t.Kind() <= reflect.Int64:
		return "whole number"
	case t.Kind() == reflect.Float64:
		return "number"
	}
	return t.Kind().String()
}

// envTransform maps MAILCAPTURE_LEGACY__IMAP__ADDRESS to legacy.imap.address.
func envTransform(name, value string) (string, any) {
	key := strings.ToLower(strings.TrimPrefix(name, EnvPrefix))
	key = strings.ReplaceAll(key, "__", ".")
	if leaf, ok := leafKinds[key]; ok && leaf.Type.Kind() == reflect.Slice {
		return key, splitList(value)
	}
	return key, value
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func flagValue(f *pflag.Flag) (string, any) {
	if _, ok := leafKinds[f.Name]; !ok {
		return "", nil
	}
	if sv, ok := f.Value.(pflag.SliceValue); ok {
		return f.Name, sv.GetSlice()
	}
	return f.Name, f.Value.String()
}

// unknownKeys reports keys that are not part of Config.
func unknownKeys(keys []string, what string) []Problem {
	var problems []Problem
	for _, key := range keys {
		if _, ok := leafKinds[key]; ok {
			continue
		}
		if isSection(key) {
			problems = append(problems, Problem{Key: key, Message: "is a section; set its keys (" + strings.Join(sectionKeys(key), ", ") + ")"})
			continue
		}
		msg := "unknown " + what + "key"
		if s := suggest(key); s != "" {
			msg += fmt.Sprintf(" (did you mean %q?)", s)
		}
		problems = append(problems, Problem{Key: key, Message: msg})
	}
	return problems
}

func isSection(key string) bool {
	return len(sectionKeys(key)) > 0
}

func sectionKeys(section string) []string {
	var out []string
	for k := range leafKinds {
		if strings.HasPrefix(k, section+".") {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}

// suggest returns the known key closest to key, if it is close enough.
func suggest(key string) string {
	best, bestDist := "", 4
	for k := range leafKinds {
		if d := editDistance(key, k); d < bestDist || (d == bestDist && k < best) {
			best, bestDist = k, d
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// leafKinds maps every config key to its struct field.
var leafKinds = collectLeaves(reflect.TypeOf(Config{}), "")

func collectLeaves(t reflect.Type, prefix string) map[string]reflect.StructField {
	out := map[string]reflect.StructField{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		key := prefix + f.Tag.Get("koanf")
		if f.Type.Kind() == reflect.Struct {
			for k, v := range collectLeaves(f.Type, key+".") {
				out[k] = v
			}
			continue
		}
		out[key] = f
	}
	return out
}

// Keys returns every config key, sorted.
func Keys() []string {
	keys := make([]string, 0, len(leafKinds))
	for k := range leafKinds {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// RegisterFlags adds one flag per config key (--legacy.imap.address, ...)
// to fs; set flags override the file and the environment.
func RegisterFlags(fs *pflag.FlagSet) {
	for _, key := range Keys() {
		f := leafKinds[key]
		usage := "sets config key " + key
		switch {
		case f.Type == reflect.TypeOf(time.Duration(0)):
			fs.Duration(key, 0, usage)
		case f.Type.Kind() == reflect.Bool:
			fs.Bool(key, false, usage)
		case f.Type.Kind() == reflect.Slice:
			fs.StringSlice(key, nil, usage)
		default:
			fs.String(key, "", usage)
		}
	}
}

// Read loads the configuration named on the command line the standard way:
// the file, then the process environment, then the set flags.
func Read(path string, fs *pflag.FlagSet) (Config, error) {
	return Load(Sources{File: path, Environ: os.Environ(), Flags: fs})
}
