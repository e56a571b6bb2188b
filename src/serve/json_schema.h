#pragma once
// JSON schema -> NFA fragment for constrained decoding: the text the fragment
// accepts is JSON that validates against the schema.
//
// Supported: type (object, array, string, number, integer, boolean, null, or
// a list of them), properties (emitted in the schema's order; those not in
// required may be skipped), required, additionalProperties (false by default;
// a schema for it on an object without properties gives a map), enum, const,
// anyOf / oneOf (oneOf as anyOf), allOf of one schema, items, minItems /
// maxItems, minProperties / maxProperties (maps), string minLength /
// maxLength, pattern (a full match of the string's value; characters JSON
// would have to escape are not generated), format date / time / date-time /
// uuid (other formats are annotations and ignored), number / integer minimum
// 0 (no sign), $ref to #/$defs/... or #/definitions/... (not recursive).
// A schema without a type (or {} / true) is any JSON value nested at most
// SchemaOptions::any_depth levels. Annotations (title, description, default,
// examples, $schema, $id, $comment, ...) are ignored; keywords that restrict
// values in ways the automaton does not follow (maximum, multipleOf,
// uniqueItems, not, if, patternProperties, ...) are rejected with a
// SchemaError naming them.
//
// Whitespace between tokens is bounded: none, one space, or a newline and at
// most SchemaOptions::max_indent spaces / tabs, so the model cannot loop on
// whitespace; there is none before or after the top-level value.
#include <string>

#include <nlohmann/json.hpp>

#include "serve/regex_dfa.h"

namespace finmoe::constrain {

// A schema the compiler rejects; path is where in the schema ("" = the root,
// "properties.amount.type", "anyOf[1]").
class SchemaError : public Error {
 public:
  SchemaError(std::string path, const std::string& message)
      : Error(message), path_(std::move(path)) {}
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct SchemaOptions {
  int any_depth = 4;    // nesting of objects/arrays in a value the schema leaves open
  int max_indent = 20;  // spaces/tabs after a newline between tokens
};

// Adds the schema's language to nfa. Throws SchemaError; a schema too large
// for nfa's limits throws SchemaError at the root.
Frag compile_json_schema(Nfa& nfa, const nlohmann::ordered_json& schema,
                         const SchemaOptions& options = {});
// Any JSON object (response_format json_object), nested at most options.any_depth levels.
Frag compile_any_json_object(Nfa& nfa, const SchemaOptions& options = {});

// The JSON whitespace fragment used between tokens (bounded as above).
Frag json_whitespace(Nfa& nfa, const SchemaOptions& options = {});

}  // namespace finmoe::constrain
