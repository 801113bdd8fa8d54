package config

import "reflect"

// Diff returns the keys (as in the file: "listen.imap") whose values
// differ between a and b, in declaration order.
func Diff(a, b Config) []string {
	var out []string
	diffValue(reflect.ValueOf(a), reflect.ValueOf(b), "", &out)
	return out
}

func diffValue(a, b reflect.Value, prefix string, out *[]string) {
	t := a.Type()
	for i := 0; i < t.NumField(); i++ {
		key := t.Field(i).Tag.Get("koanf")
		if key == "" {
			continue
		}
		if prefix != "" {
			key = prefix + "." + key
		}
		fa, fb := a.Field(i), b.Field(i)
		if fa.Kind() == reflect.Struct && t.Field(i).Type.PkgPath() == t.PkgPath() {
			diffValue(fa, fb, key, out)
			continue
		}
		if !reflect.DeepEqual(fa.Interface(), fb.Interface()) {
			*out = append(*out, key)
		}
	}
}
