# cmake -DFINMOE_BUILD_DIR=B -DFINMOE_SOURCE_DIR=S [-DCMAKE_GENERATOR=G] -P install_test.cmake
#
# Installs the finmoe build B into a fresh prefix, builds the consumer project
# (tests/install/consumer) against that prefix alone, and checks what it
# prints: the model config's fields as config.json has them, and token ids
# equal to Hugging Face's (tests/data/tokenizer/qwen3/qwen3.ids.jsonl).
cmake_minimum_required(VERSION 3.22)
foreach(v FINMOE_BUILD_DIR FINMOE_SOURCE_DIR)
  if(NOT ${v})
    message(FATAL_ERROR "install_test: -D${v}=... is required")
  endif()
endforeach()
set(work ${FINMOE_BUILD_DIR}/install-test)
set(prefix ${work}/prefix)
file(REMOVE_RECURSE ${work})

function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install_test: ${what} failed (${rc}):\n${out}\n${err}")
  endif()
  set(run_out "${out}" PARENT_SCOPE)
endfunction()

run("cmake --install" ${CMAKE_COMMAND} --install ${FINMOE_BUILD_DIR} --prefix ${prefix})
foreach(f include/finmoe/tokenizer.h lib/cmake/finmoe/finmoeConfig.cmake
          lib/cmake/finmoe/finmoeConfigVersion.cmake lib/cmake/finmoe/finmoeTargets.cmake bin/finmoe)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "install_test: the install has no ${f}")
  endif()
endforeach()

set(gen_args)
if(CMAKE_GENERATOR)
  set(gen_args -G ${CMAKE_GENERATOR})
endif()
# only the prefix: the consumer must not see finmoe's build or source tree
run("configuring the consumer" ${CMAKE_COMMAND} -S ${FINMOE_SOURCE_DIR}/tests/install/consumer
    -B ${work}/consumer ${gen_args} -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=${prefix})
run("building the consumer" ${CMAKE_COMMAND} --build ${work}/consumer)
file(GLOB exe ${work}/consumer/consumer)

set(model ${FINMOE_SOURCE_DIR}/tests/data/hf/llama_gqa_llama3rope)
set(tok ${FINMOE_SOURCE_DIR}/tests/data/tokenizer/qwen3)
file(READ ${model}/config.json config)
string(JSON want_type GET "${config}" model_type)
string(JSON want_layers GET "${config}" num_hidden_layers)
set(checked 0)
foreach(n 150 200 202)  # an English line and two Chinese ones
  file(STRINGS ${tok}/qwen3.ids.jsonl case ENCODING UTF-8 REGEX "^{\"id\":${n},")
  string(JSON text GET "${case}" text)
  string(JSON n_ids LENGTH "${case}" ids)
  set(want_ids "")
  math(EXPR last "${n_ids} - 1")
  foreach(i RANGE ${last})
    string(JSON id GET "${case}" ids ${i})
    list(APPEND want_ids ${id})
  endforeach()
  string(REPLACE ";" "," want_ids "${want_ids}")
  run("the consumer" ${exe} ${model} ${tok} "${text}")
  set(want "model_type=${want_type}\nnum_hidden_layers=${want_layers}\nids=${want_ids}\n")
  if(NOT run_out STREQUAL want)
    message(FATAL_ERROR "install_test: case ${n} ('${text}'): the consumer printed\n${run_out}\nexpected\n${want}")
  endif()
  math(EXPR checked "${checked} + 1")
endforeach()
message(STATUS "install_test: consumer built against ${prefix}; ${checked} tokenizations equal HF's")
